"""Triton repository: configs are Triton's ModelConfig protobuf, parse back, and match the bundle's model IO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import BundleManifest
from edgeft.core.reports import ExportReport
from edgeft.export.triton import TARGETS, config_text, label_line, model_config, model_prefix, parse_config
from edgeft.export.triton_proto import message_class


def _enum_name(msg, field: str) -> str:
    return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(msg, field)].name


def test_model_prefix_is_triton_safe():
    assert model_prefix("Fish v2 (lite0)") == "fish_v2_lite0"
    assert model_prefix("---") == "model"
    assert model_prefix("exp", "0123456789abcdef") == "exp_01234567"  # two runs named exp never collide


def test_labels_survive_any_class_name():
    classes = ["Sea\nBass", "Trout", "back\\slash", "Red\r\nMullet", "Dorade  "]
    text = "".join(f"{label_line(c)}\n" for c in classes)
    lines = text.split("\n")[:-1]
    assert len(lines) == len(classes) and lines[1] == "Trout" and lines[4] == "Dorade  "
    assert [bytes(x, "utf-8").decode("unicode_escape") for x in lines] == classes  # escapes read back


def test_config_text_is_protobuf_text_format_of_the_model_config():
    cfg = model_config("fish_onnx", TARGETS[0], 224, 9, "onnx-int8")
    text = config_text(cfg, "onnx-int8")
    parsed = text_format.Parse(text, message_class("ModelConfig")())
    assert parsed.name == "fish_onnx" and parsed.backend == "onnxruntime" and parsed.max_batch_size == 32
    (inp,), (out,) = parsed.input, parsed.output
    assert (inp.name, list(inp.dims), _enum_name(inp, "data_type"), _enum_name(inp, "format")) == (
        "image",
        [224, 224, 3],
        "TYPE_UINT8",
        "FORMAT_NHWC",
    )
    assert (out.name, list(out.dims), out.label_filename) == ("logits", [9], "labels.txt")
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 16]
    assert _enum_name(parsed.instance_group[0], "kind") == "KIND_CPU"
    assert parsed.parameters["edgeft_artifact"].string_value == "onnx-int8"


def test_tensorrt_target_uses_the_platform_field_and_a_gpu_instance():
    cfg = model_config("fish_tensorrt", TARGETS[2], 224, 9, "tensorrt-int8")
    assert (cfg.platform, cfg.backend) == ("tensorrt_plan", "")
    (inp,) = cfg.input  # a plan cannot be re-wrapped: float NCHW in
    assert (inp.name, list(inp.dims), _enum_name(inp, "data_type")) == ("input", [3, 224, 224], "TYPE_FP32")
    assert _enum_name(cfg.instance_group[0], "kind") == "KIND_GPU"


@pytest.mark.parametrize(
    "bad",
    [
        'name: "x"\nmax_batch_sizes: 3',
        'name: "x"\ninput { dims: [3, 2 }',
        'name: "x"\ninstance_group { kind: KIND_TPU }',
    ],
)
def test_a_config_outside_tritons_schema_is_refused(bad):
    with pytest.raises(EdgeftError, match="not a valid Triton model config"):
        parse_config(bad, "config.pbtxt")


@pytest.mark.slow
def test_every_written_config_parses_and_matches_the_bundle(tiny_bundle, colour_tree):
    bundle = BundleManifest.load(tiny_bundle)
    report = ExportReport.load(tiny_bundle / "export_report.json")
    s, n = bundle.preprocess.input_size, len(bundle.classes)
    models = sorted(p for p in (tiny_bundle / "triton").iterdir() if p.is_dir())
    assert [p.name for p in models] == report.packages["triton"]
    prefix = model_prefix("tiny", bundle.source.weights_sha256)
    assert {f"{prefix}_onnx", f"{prefix}_openvino"} <= {p.name for p in models}
    crops, reference = _crops_and_reference(tiny_bundle, bundle, sorted(colour_tree.rglob("*.png"))[::7][:12])
    for model_dir in models:
        cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), message_class("ModelConfig")())
        assert cfg.name == model_dir.name and cfg.max_batch_size > 0
        (inp,), (out,) = cfg.input, cfg.output
        backend = cfg.backend or cfg.platform
        if backend == "tensorrt_plan":
            assert (inp.name, list(inp.dims), _enum_name(inp, "data_type")) == ("input", [3, s, s], "TYPE_FP32")
        else:  # images in: uint8 NHWC crops, the preprocessing inside the graph
            assert (inp.name, list(inp.dims), _enum_name(inp, "data_type")) == ("image", [s, s, 3], "TYPE_UINT8")
            assert _enum_name(inp, "format") == "FORMAT_NHWC"
        assert (out.name, list(out.dims), _enum_name(out, "data_type")) == ("logits", [n], "TYPE_FP32")
        assert (model_dir / out.label_filename).read_text().splitlines() == bundle.classes
        art = bundle.artifact(cfg.parameters["edgeft_artifact"].string_value)
        files = sorted((model_dir / "1").iterdir())
        if backend != "tensorrt_plan":
            logits = _run_packaged(backend, files, crops)
            want = reference[art.name]
            assert (logits.argmax(1) == want.argmax(1)).mean() >= 0.9
            if art.precision == "fp32":
                np.testing.assert_allclose(logits, want, atol=1e-4)


def _crops_and_reference(
    bundle_dir: Path, bundle: BundleManifest, paths: list[Path]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint8 S x S crops of some images, and each bundle artifact's logits on THE preprocessing of them."""
    from edgeft.core.preprocess import load_image, normalize, resize_crop
    from edgeft.engines.select import open_artifact

    crops = np.stack([np.asarray(resize_crop(load_image(p), bundle.preprocess)) for p in paths])
    x = np.stack([normalize(c, bundle.preprocess) for c in crops])
    reference = {}
    for art in bundle.artifacts:
        if art.format in ("onnx", "openvino"):
            spec = "onnxruntime:cpu" if art.format == "onnx" else "openvino:CPU"
            with open_artifact(bundle_dir, bundle, spec, art) as engine:
                reference[art.name] = engine.infer(x)
    return crops, reference


def _run_packaged(backend: str, files: list[Path], crops: np.ndarray) -> np.ndarray:
    if backend == "onnxruntime":
        import onnxruntime as ort

        (model,) = files
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return sess.run(["logits"], {"image": crops})[0]
    import openvino as ov

    assert [f.name for f in files] == ["model.bin", "model.xml"]
    compiled = ov.Core().compile_model(str(files[1]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(crops)[compiled.output(0)]


@pytest.mark.slow
def test_image_input_wrappers_reproduce_the_fp32_models(tiny_bundle, colour_tree, tmp_path):
    from edgeft.export.triton import onnx_image_model, openvino_image_model

    bundle = BundleManifest.load(tiny_bundle)
    crops, reference = _crops_and_reference(tiny_bundle, bundle, sorted(colour_tree.rglob("*.png"))[:16])
    onnx_image_model(tiny_bundle / bundle.artifact("onnx-fp32").path, tmp_path / "model.onnx", bundle.preprocess)
    got = _run_packaged("onnxruntime", [tmp_path / "model.onnx"], crops)
    np.testing.assert_allclose(got, reference["onnx-fp32"], atol=1e-5)
    (tmp_path / "ov").mkdir()
    ir = tiny_bundle / bundle.artifact("openvino-fp32").path
    openvino_image_model(ir, tmp_path / "ov" / "model.xml", bundle.preprocess)
    got = _run_packaged("openvino", sorted((tmp_path / "ov").iterdir()), crops)
    np.testing.assert_allclose(got, reference["openvino-fp32"], atol=1e-5)
