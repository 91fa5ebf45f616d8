"""Triton repository: configs are Triton's ModelConfig protobuf, parse back, and match the bundle's model IO."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file
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
        "input",
        [3, 224, 224],
        "TYPE_FP32",
        "FORMAT_NCHW",
    )
    assert (out.name, list(out.dims), out.label_filename) == ("logits", [9], "labels.txt")
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 16]
    assert _enum_name(parsed.instance_group[0], "kind") == "KIND_CPU"
    assert parsed.parameters["edgeft_artifact"].string_value == "onnx-int8"


def test_tensorrt_target_uses_the_platform_field_and_a_gpu_instance():
    cfg = model_config("fish_tensorrt", TARGETS[2], 224, 9, "tensorrt-int8")
    assert (cfg.platform, cfg.backend) == ("tensorrt_plan", "")
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
def test_every_written_config_parses_and_matches_the_bundle(tiny_bundle):
    bundle = BundleManifest.load(tiny_bundle)
    report = ExportReport.load(tiny_bundle / "export_report.json")
    s, n = bundle.preprocess.input_size, len(bundle.classes)
    models = sorted(p for p in (tiny_bundle / "triton").iterdir() if p.is_dir())
    assert [p.name for p in models] == report.packages["triton"]
    prefix = model_prefix("tiny", bundle.source.weights_sha256)
    assert {f"{prefix}_onnx", f"{prefix}_openvino"} <= {p.name for p in models}
    for model_dir in models:
        cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), message_class("ModelConfig")())
        assert cfg.name == model_dir.name and cfg.max_batch_size > 0
        (inp,), (out,) = cfg.input, cfg.output
        assert (inp.name, list(inp.dims), _enum_name(inp, "data_type")) == ("input", [3, s, s], "TYPE_FP32")
        assert (out.name, list(out.dims), _enum_name(out, "data_type")) == ("logits", [n], "TYPE_FP32")
        assert (model_dir / out.label_filename).read_text().splitlines() == bundle.classes
        art = bundle.artifact(cfg.parameters["edgeft_artifact"].string_value)
        files = sorted((model_dir / "1").iterdir())
        assert sorted(sha256_file(f) for f in files) == sorted([art.sha256, *art.extra_files.values()])
        _check_model_io(cfg.backend or cfg.platform, files, s, n)


def _check_model_io(backend: str, files: list[Path], s: int, n: int) -> None:
    """The packaged model file itself has the IO the config declares (batch dimension dynamic)."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        (model,) = files
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        i, o = sess.get_inputs()[0], sess.get_outputs()[0]
        assert (i.name, i.shape[1:], o.name, o.shape[1:]) == ("input", [3, s, s], "logits", [n])
    elif backend == "tensorrt_plan":
        assert [f.name for f in files] == ["model.plan"]
    else:
        import openvino as ov

        assert [f.name for f in files] == ["model.bin", "model.xml"]
        m = ov.Core().read_model(str(files[1]))
        assert "input" in m.inputs[0].get_names() and "logits" in m.outputs[0].get_names()
        assert str(m.inputs[0].get_partial_shape()) == f"[?,3,{s},{s}]"
        assert str(m.outputs[0].get_partial_shape()) == f"[?,{n}]"
