"""The INT8 search on a planted graph: one conv input that per-tensor INT8 cannot represent must end up float."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeft.export.quant import ort as ort_quant
from edgeft.export.quant.search import conv_macs, float_share, rank_convs, search, search_target, write_tradeoff

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

C_IN, SIZE, N_CLASSES = 3, 8, 4


def _conv(name: str, x: str, w: np.ndarray, out: str) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    return helper.make_node("Conv", [x, f"{name}.w"], [out], name=name), numpy_helper.from_array(w, f"{name}.w")


def planted_model(path) -> None:
    """stem -> B (channel 0 x1000: a huge outlier channel) -> C (reads channel 0 x0.001) -> D -> E -> pool.

    Quantizing C's input per tensor spends all 256 levels on channel 0, so channels 1..7, which carry the
    answer, round to nothing. Keeping C float fixes it; D and E quantize fine.
    """
    rng = np.random.default_rng(0)
    stem = rng.normal(size=(8, C_IN, 1, 1)).astype(np.float32)
    b = rng.normal(size=(8, 8, 1, 1)).astype(np.float32)
    b[0] *= 1000.0
    c = rng.normal(size=(8, 8, 1, 1)).astype(np.float32)
    c[:, 0] *= 0.001
    d = rng.normal(size=(8, 8, 1, 1)).astype(np.float32)
    e = rng.normal(size=(N_CLASSES, 8, 1, 1)).astype(np.float32)
    nodes, inits = [], []
    for name, x, w, out in [
        ("stem", "input", stem, "s"),
        ("convB", "s", b, "b"),
        ("convC", "b", c, "c"),
        ("convD", "c", d, "d"),
        ("convE", "d", e, "e"),
    ]:
        node, init = _conv(name, x, w, out)
        nodes.append(node)
        inits.append(init)
    nodes.append(helper.make_node("GlobalAveragePool", ["e"], ["p"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["p"], ["logits"], name="flat"))
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, C_IN, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, N_CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def _fp32_logits(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_the_search_keeps_the_planted_layer_float_and_quantizes_the_rest(tmp_path):
    planted_model(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(1)
    calib = rng.normal(size=(32, C_IN, SIZE, SIZE)).astype(np.float32)
    x = rng.normal(size=(200, C_IN, SIZE, SIZE)).astype(np.float32)
    ref = _fp32_logits(tmp_path / "fp32.onnx", x)
    variant = ort_quant.U8S8_CPU
    cache = tmp_path / "cache" / "ranges.json"

    # all-INT8 (stem float) really is broken by the planted channel
    all_int8 = tmp_path / "all.onnx"
    ort_quant.quantize(tmp_path / "fp32.onnx", all_int8, variant, calib, "minmax", cache)
    broken = float((_fp32_logits(all_int8, x).argmax(1) == ref.argmax(1)).mean())
    assert broken < 0.9

    # the sensitivity ranking puts the planted conv above the harmless tail (D, E)
    ranking = [name for name, _ in rank_convs(tmp_path / "fp32.onnx", all_int8, x[:16], ["stem"])]
    assert ranking.index("convC") < min(ranking.index("convD"), ranking.index("convE"))

    out = tmp_path / "chosen.onnx"
    # random logits have near-ties that any rounding flips: a 0.90 gate (search target 0.95) keeps the test exact
    # min_speedup=0: in this 5-conv toy the float convs hold most multiply-adds; what is tested is which stay float
    info, result = search(tmp_path / "fp32.onnx", out, variant, calib, "minmax", cache, x, ref, 0.90, min_speedup=0.0)
    assert result.chosen is not None and info["search"]["reached_target"]
    assert "convC" in info["float_nodes"] and not {"convD", "convE"} & set(info["float_nodes"])
    agreement = float((_fp32_logits(out, x).argmax(1) == ref.argmax(1)).mean())
    assert agreement == result.best.agreement >= search_target(0.90) == 0.95
    assert [p.agreement < 0.5 for p in result.points[:-1]] == [True] * (len(result.points) - 1)  # B alone: broken
    weights_int8 = [i.name for i in onnx.load(str(out)).graph.initializer if i.data_type == TensorProto.INT8]
    assert any(name.startswith(("convD", "convE")) for name in weights_int8)  # the harmless tail stays INT8

    files = write_tradeoff([result], 0.90, tmp_path)
    doc = json.loads((tmp_path / "tradeoff.json").read_text())
    point = doc["artifacts"][0]["points"][doc["artifacts"][0]["chosen"]]
    assert point["agreement"] == result.best.agreement and "tradeoff.json" in files


def test_multiply_adds_are_counted_from_the_graph(tmp_path):
    planted_model(tmp_path / "fp32.onnx")
    sample = np.zeros((1, C_IN, SIZE, SIZE), np.float32)
    # 1x1 convs on an 8x8 map: C_out x 8 x 8 outputs, C_in products each
    macs = conv_macs(tmp_path / "fp32.onnx", sample)
    assert macs == {
        "stem": 8 * 64 * 3,
        "convB": 8 * 64 * 8,
        "convC": 8 * 64 * 8,
        "convD": 8 * 64 * 8,
        "convE": 4 * 64 * 8,
    }
    assert float_share(macs, ["stem", "convB"]) == (1536 + 4096) / (1536 + 3 * 4096 + 2048)


def test_convs_whose_size_shape_inference_leaves_open_are_measured_on_a_sample(tmp_path):
    """A graph with symbolic H x W (as the TorchScript exporter writes timm's run-time "same" padding): the
    convs' output sizes come from running one image, not from their weights alone."""
    rng = np.random.default_rng(0)
    dw = rng.normal(size=(8, 1, 3, 3)).astype(np.float32)  # depthwise 3x3, stride 2, pad 1: 8x8 -> 4x4
    pw = rng.normal(size=(4, 8, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "dw.w"], ["a"], name="dw", group=8, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "pw.w"], ["b"], name="pw"),
        helper.make_node("GlobalAveragePool", ["b"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["logits"], name="flat"),
    ]
    graph = helper.make_graph(
        nodes,
        "symbolic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(dw, "dw.w"), numpy_helper.from_array(pw, "pw.w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "sym.onnx"))
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "sym.onnx")))
    assert not any(v.name == "a" and v.type.tensor_type.shape.dim[2].dim_value for v in inferred.graph.value_info)
    macs = conv_macs(tmp_path / "sym.onnx", np.zeros((1, 8, SIZE, SIZE), np.float32))
    assert macs == {"dw": 8 * 4 * 4 * (1 * 3 * 3), "pw": 4 * 4 * 4 * 8}


def test_without_a_point_at_the_target_the_best_one_that_still_pays_is_kept():
    from edgeft.export.quant.search import Point, SearchResult, modelled_speedup

    # ONNX Runtime's INT8 gains 2x per multiply-add: a third of them float leaves exactly 1.5x
    assert modelled_speedup(0.0, "onnxruntime") == 2.0 and modelled_speedup(1 / 3, "onnxruntime") == pytest.approx(1.5)
    assert modelled_speedup(0.0, "openvino") == 3.0 and modelled_speedup(1.0, "openvino") == 1.0
    r = SearchResult("onnx-int8", 0.995, 500, fp32_images_per_s=300.0, min_speedup=1.5)
    r.points = [
        Point(1, ["stem"], 0.980, 10, 600.0, 0.03, 2.6),
        Point(3, ["stem", "a", "b"], 0.986, 7, 500.0, 0.2, 2.0),
        Point(9, ["stem", *"abcdefgh"], 0.990, 5, 310.0, 0.8, 1.1),  # agrees most, but mostly float
    ]
    assert r.best is r.points[1]
    r.points[2].modelled_speedup = 1.58  # now it pays
    assert r.best is r.points[2]
    r.chosen = 0
    assert r.best is r.points[0]


def test_what_ships_does_not_depend_on_the_stopwatch():
    from edgeft.export.quant.search import Point, SearchResult, modelled_speedup

    def result(speeds: list[float], fp32: float) -> SearchResult:
        r = SearchResult("onnx-int8-cpu", 0.995, 500, fp32_images_per_s=fp32)
        shares = [0.03, 0.25, 0.999]
        r.points = [
            Point(i + 1, ["c"] * (i + 1), 0.98 + i / 200, 3 - i, s, sh, modelled_speedup(sh, "onnxruntime"))
            for i, (s, sh) in enumerate(zip(speeds, shares, strict=True))
        ]
        return r

    # a quiet machine and a loaded one time the same graphs 2x apart (FP32 timed first, under load)
    quiet, loaded = result([506.0, 359.0, 223.0], 266.0), result([443.0, 310.0, 211.0], 114.0)
    assert quiet.best.n_float == loaded.best.n_float == 2  # the 99.9%-float point never ships as INT8


def test_the_search_ships_the_same_graph_whatever_the_timings_and_says_when_the_target_costs_too_much(
    tmp_path, monkeypatch
):
    import edgeft.export.quant.search as search_module

    planted_model(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(1)
    calib = rng.normal(size=(32, C_IN, SIZE, SIZE)).astype(np.float32)
    x = rng.normal(size=(200, C_IN, SIZE, SIZE)).astype(np.float32)
    ref = _fp32_logits(tmp_path / "fp32.onnx", x)
    variant, cache = ort_quant.U8S8_CPU, tmp_path / "cache" / "ranges.json"
    # stem + B + C float hold 61% of this toy's multiply-adds: modelled 1.24x FP32 on ONNX Runtime (2x per INT8 MAC)
    shipped = []
    for timing in (1e6, 1.0):  # an idle machine, and one so loaded that INT8 looks no faster than anything
        monkeypatch.setattr(search_module, "_speed", lambda engine, x, t=timing: t)
        out = tmp_path / f"chosen{len(shipped)}.onnx"
        info, result = search(
            tmp_path / "fp32.onnx", out, variant, calib, "minmax", cache, x, ref, 0.90, min_speedup=1.2
        )
        assert result.chosen is not None and "convC" in info["float_nodes"]
        assert result.best.modelled_speedup == pytest.approx(1 / (9728 / 15872 + (6144 / 15872) / 2))
        shipped.append(out.read_bytes())
    assert shipped[0] == shipped[1]
    # the same target at a 1.5x bar: reached, but not worth it; the best graph that pays is kept and said so
    info, result = search(tmp_path / "fp32.onnx", tmp_path / "c.onnx", variant, calib, "minmax", cache, x, ref, 0.90)
    assert result.reached is not None and result.chosen is None
    assert info["search"]["reached_target"] and not info["search"]["chosen"]
    assert "convC" not in info["float_nodes"] and result.best.modelled_speedup >= 1.5
    assert "needed 3 float convs (61% of the multiply-adds: modelled 1.24x FP32 < 1.5x)" in result.why_not_chosen()
    result.reached = None
    assert "no INT8 graph reached 95.0% agreement" in result.why_not_chosen()
