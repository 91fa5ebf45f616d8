"""Pure-Python check that a Q/DQ ONNX graph is one TensorRT's explicit-quantization parser accepts.

TensorRT rules checked (TRT 10 "Explicit Quantization"): default-domain QuantizeLinear/DequantizeLinear at
opset >= 13; INT8 only (no uint8, no int32 bias DQ); zero-point 0 everywhere (symmetric); scales constant,
finite and > 0; activations per-tensor; per-channel weights along the output-channel axis (Conv: 0,
ConvTranspose: 1, Gemm: 0 with transB=1 else 1, MatMul: last); no operator-oriented QLinear*/Integer ops.
Runs without TensorRT, so the graph is vetted on any machine before a GPU ever sees it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QOPERATOR_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearConcat",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
)
MIN_OPSET = 13


def _constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by tensor name."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight_axis(consumer, input_index: int, consts: dict, dq_out_rank: int) -> int | None:
    """The output-channel axis TensorRT expects for a per-channel weight feeding `consumer`."""
    op = consumer.op_type
    if op == "Conv" and input_index == 1:
        return 0
    if op == "ConvTranspose" and input_index == 1:
        return 1
    if op == "Gemm" and input_index == 1:
        return 0 if _attr(consumer, "transB", 0) else 1
    if op == "MatMul" and input_index == 1:
        return dq_out_rank - 1
    return None


def check_qdq_for_tensorrt(onnx_path: str | Path) -> list[str]:
    """Problems that would stop TensorRT from building this Q/DQ graph as INT8 (empty list = fine)."""
    import onnx

    model = onnx.load(str(onnx_path))
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: per-channel Q/DQ needs opset >= 13")
    consts = _constants(model)
    consumers: dict[str, list[tuple[object, int]]] = {}
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, idx))
    qdq = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized (Q/DQ) graph")
    for node in model.graph.node:
        if node.op_type in QOPERATOR_OPS:
            problems.append(f"{node.name or node.op_type}: operator-oriented {node.op_type} (TensorRT needs Q/DQ)")
    for node in qdq:
        problems.extend(_check_qdq_node(node, consts, consumers))
    return problems


def _check_qdq_node(node, consts: dict, consumers: dict) -> list[str]:
    label = f"{node.op_type} {node.name or node.output[0]}"
    out: list[str] = []
    if node.domain not in ("", "ai.onnx"):
        out.append(f"{label}: custom domain {node.domain!r} (TensorRT parses only standard ONNX Q/DQ)")
    scale = consts.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        out.append(f"{label}: scale is not a constant")
    elif scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        out.append(f"{label}: scale must be finite and > 0")
    zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and zp is None:
        out.append(f"{label}: zero-point is not a constant")
    dtype = zp.dtype if zp is not None else None
    if dtype is None and node.op_type == "DequantizeLinear" and node.input[0] in consts:
        dtype = consts[node.input[0]].dtype
    if dtype is None and node.op_type == "QuantizeLinear" and _attr(node, "output_dtype", 0) == 0:
        dtype = np.dtype(np.uint8)  # ONNX default output type of QuantizeLinear without zero-point
    if dtype == np.int32:
        return [*out, f"{label}: int32 DequantizeLinear (quantized bias); TensorRT takes float bias"]
    if dtype is not None and dtype != np.int8:
        out.append(f"{label}: {dtype} quantization (TensorRT needs int8)")
    if zp is not None and np.any(zp != 0):
        out.append(f"{label}: zero-point {int(np.ravel(zp)[np.flatnonzero(np.ravel(zp))[0]])} != 0 (must be symmetric)")
    if _attr(node, "block_size", 0):
        out.append(f"{label}: blocked quantization is not supported for int8")
    if scale is not None and scale.size > 1:
        out.extend(_check_axis(node, label, consts, consumers))
    return out


def _check_axis(node, label: str, consts: dict, consumers: dict) -> list[str]:
    """Per-channel scales: weights only, along the consumer's output-channel axis."""
    is_weight = node.op_type == "DequantizeLinear" and node.input[0] in consts
    if node.op_type == "QuantizeLinear" and node.input[0] in consts:
        is_weight = True  # float weight -> Q -> DQ (AddQDQPairToWeight style)
    if not is_weight:
        return [f"{label}: per-channel activation quantization (TensorRT needs per-tensor activations)"]
    rank = consts[node.input[0]].ndim
    axis = int(_attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    tail = [node]
    if node.op_type == "QuantizeLinear":
        tail = [n for n, _ in consumers.get(node.output[0], []) if n.op_type == "DequantizeLinear"]
    out = []
    for dq in tail:
        for consumer, idx in consumers.get(dq.output[0], []):
            want = _weight_axis(consumer, idx, consts, rank)
            if want is None:
                out.append(
                    f"{label}: per-channel scale feeds {consumer.op_type} input {idx}, which TensorRT quantizes per-tensor"
                )
            elif want != axis:
                out.append(
                    f"{label}: per-channel axis {axis} for {consumer.op_type} weights (TensorRT needs axis {want})"
                )
    return out
