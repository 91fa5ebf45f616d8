"""check_qdq_for_tensorrt on hand-built Q/DQ graphs: what TensorRT accepts and each rule it would reject."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeft.export.qdq_check import check_qdq_for_tensorrt  # noqa: E402


def _conv_qdq(
    tmp_path,
    *,
    act_dtype=np.int8,
    act_zp=0,
    w_axis=0,
    w_zp=0,
    opset=17,
    per_channel_act=False,
    int32_bias=False,
):
    """input -> Q -> DQ -> Conv(DQ(int8 weights)) -> logits, with the knobs each test turns."""
    c_out = 4
    w = numpy_helper.from_array(np.ones((c_out, 3, 3, 3), np.int8), "w_q")
    w_scale = numpy_helper.from_array(np.full((c_out,), 0.01, np.float32), "w_scale")
    w_zp_t = numpy_helper.from_array(np.full((c_out,), w_zp, np.int8), "w_zp")
    a_scale = numpy_helper.from_array(
        np.full((3,), 0.02, np.float32) if per_channel_act else np.array(0.02, np.float32), "a_scale"
    )
    a_zp = numpy_helper.from_array(
        np.full((3,), act_zp, act_dtype) if per_channel_act else np.array(act_zp, act_dtype), "a_zp"
    )
    inits = [w, w_scale, w_zp_t, a_scale, a_zp]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "a_scale", "a_zp"], ["x_q"], name="q_in", axis=1),
        helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zp"], ["x_dq"], name="dq_in", axis=1),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w", axis=w_axis),
    ]
    conv_inputs = ["x_dq", "w_dq"]
    if int32_bias:
        inits += [
            numpy_helper.from_array(np.zeros((c_out,), np.int32), "b_q"),
            numpy_helper.from_array(np.full((c_out,), 2e-4, np.float32), "b_scale"),
            numpy_helper.from_array(np.zeros((c_out,), np.int32), "b_zp"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b_dq"], name="dq_b", axis=0))
        conv_inputs.append("b_dq")
    nodes.append(helper.make_node("Conv", conv_inputs, ["logits"], name="conv"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, c_out, 6, 6])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    return path


def test_symmetric_int8_per_channel_conv_passes(tmp_path):
    assert check_qdq_for_tensorrt(_conv_qdq(tmp_path)) == []


def test_uint8_activation_with_nonzero_zero_point_is_rejected(tmp_path):
    problems = check_qdq_for_tensorrt(_conv_qdq(tmp_path, act_dtype=np.uint8, act_zp=128))
    assert any("uint8" in p for p in problems)
    assert any("zero-point 128" in p for p in problems)


def test_nonzero_weight_zero_point_is_rejected(tmp_path):
    problems = check_qdq_for_tensorrt(_conv_qdq(tmp_path, w_zp=3))
    assert any("dq_w" in p and "zero-point 3" in p for p in problems)


def test_conv_weight_axis_must_be_0(tmp_path):
    problems = check_qdq_for_tensorrt(_conv_qdq(tmp_path, w_axis=1))
    assert any("axis 1" in p and "needs axis 0" in p for p in problems)


def test_old_opset_is_rejected(tmp_path):
    problems = check_qdq_for_tensorrt(_conv_qdq(tmp_path, opset=12))
    assert any("opset 12" in p for p in problems)


def test_per_channel_activation_is_rejected(tmp_path):
    problems = check_qdq_for_tensorrt(_conv_qdq(tmp_path, per_channel_act=True))
    assert any("per-channel activation" in p for p in problems)


def test_int32_bias_is_rejected(tmp_path):
    problems = check_qdq_for_tensorrt(_conv_qdq(tmp_path, int32_bias=True))
    assert any("int32" in p and "bias" in p for p in problems)


def test_float_graph_and_qoperator_graph_are_rejected(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "f.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert any("no QuantizeLinear" in p for p in check_qdq_for_tensorrt(path))
    graph.node.append(helper.make_node("MatMulInteger", ["a", "b"], ["c"], name="mmi"))
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert any("MatMulInteger" in p for p in check_qdq_for_tensorrt(path))
