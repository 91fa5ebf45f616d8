"""Export pieces that need no exported model: pbtxt parser, plan names, format registry, acceptance rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeft.export.bundle import _check_out, _replace_dir
from edgeft.export.context import Built, EvalSet, ExportContext, ExportOptions
from edgeft.export.errors import ExportRefusedError
from edgeft.export.evaluate import evaluate
from edgeft.export.registry import resolve
from edgeft.export.tensorrt_build import plan_name, unavailable
from edgeft.export.triton import as_list, config_text, parse_pbtxt
from edgeft.manifest import BundleManifest, ModelManifest, PreprocessSpec


def test_pbtxt_parser_reads_triton_config_subset():
    text = config_text("fish_onnx", "backend", "onnxruntime", "KIND_CPU", 224, 9, "onnx-int8")
    cfg = parse_pbtxt(
        text + '\noptimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }'
    )
    assert cfg["name"] == "fish_onnx" and cfg["backend"] == "onnxruntime" and cfg["max_batch_size"] == 32
    (inp,) = as_list(cfg["input"])
    assert inp == {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 224, 224]}
    assert as_list(cfg["output"])[0]["dims"] == [9]
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8, 16]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["optimization"]["execution_accelerators"]["cpu_execution_accelerator"][0]["name"] == "openvino"


def test_pbtxt_parser_repeated_fields_comments_and_errors():
    cfg = parse_pbtxt('# c\ninput { name: "a" }\ninput { name: "b" } # trailing\nflag: true\nx: -1.5e-3\ns: "q\\"t"')
    assert [i["name"] for i in cfg["input"]] == ["a", "b"]
    assert cfg["flag"] is True and cfg["x"] == -1.5e-3 and cfg["s"] == 'q"t'
    from edgeft.errors import EdgeftError

    for bad in ('input { name: "a" ', 'name: "x', "dims: [ 1, 2 "):
        with pytest.raises(EdgeftError):
            parse_pbtxt(bad)


def test_plan_name_encodes_gpu_and_tensorrt_version():
    assert plan_name("int8", "8.9", "10.3.0.26") == "tensorrt/model.int8.sm89.trt10.3.plan"
    assert plan_name("fp16", "12.0", "11.0.0") == "tensorrt/model.fp16.sm120.trt11.0.plan"


@pytest.mark.skipif(unavailable() is None, reason="TensorRT and a GPU are available here")
def test_tensorrt_skipped_with_one_clear_line():
    lines: list[str] = []
    chosen = [f.name for f in resolve(["tensorrt"], lines.append)]
    assert chosen == ["onnx"]
    assert len(lines) == 1 and lines[0].startswith("tensorrt: skipped (")


def test_unknown_format_is_an_error():
    from edgeft.errors import EdgeftError

    with pytest.raises(EdgeftError, match="unknown format"):
        resolve(["onnx", "coreml"], print)


def _ctx(tmp_path: Path, max_drop: float = 1.0) -> ExportContext:
    manifest = ModelManifest(
        task="classification",
        name="t",
        backbone={"id": "x"},
        classes=["a", "b"],
        preprocess=PreprocessSpec().to_dict(),
        head={},
        weights={},
    )
    y = np.array([0, 1] * 25)
    ref = np.eye(2, dtype=np.float32)[y] * 5
    test = EvalSet("test", np.zeros((50, 1), np.float32), y, [], ref)
    return ExportContext(
        tmp_path, tmp_path, manifest, None, "w", {}, ExportOptions(max_drop=max_drop), test, lambda _m: None
    )


def test_int8_losing_more_than_max_drop_is_rejected(tmp_path):
    ctx = _ctx(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x" * 1000)
    worse = ctx.test.reference.copy()
    worse[0] = worse[0][::-1]  # one of 50 images flips: -2 pts
    ctx.logits["onnx-int8"] = worse
    row = evaluate(ctx, Built("onnx-int8", "onnx", "int8", "m.onnx"), None)
    assert row.status == "rejected" and "2.00 pts" in row.reason and row.agreement == pytest.approx(0.98)
    ctx2 = _ctx(tmp_path, max_drop=2.5)
    ctx2.logits["onnx-int8"] = worse
    assert evaluate(ctx2, Built("onnx-int8", "onnx", "int8", "m.onnx"), None).status == "ok"


def test_fp32_artifact_off_by_more_than_1e4_is_rejected(tmp_path):
    ctx = _ctx(tmp_path)
    (tmp_path / "m.xml").write_bytes(b"x")
    ctx.logits["onnx-fp32"] = ctx.test.reference
    ctx.logits["openvino-fp32"] = ctx.test.reference + 3e-4
    row = evaluate(ctx, Built("openvino-fp32", "openvino", "fp32", "m.xml"), None)
    assert row.status == "rejected" and "max |delta logit|" in row.reason


def test_out_dir_rules(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    _check_out(out, run, "a" * 64, force=False)  # new dir: fine
    out.mkdir()
    _check_out(out, run, "a" * 64, force=False)  # empty dir: fine
    (out / "bundle.json").write_text(json.dumps({"source": {"weights_sha256": "a" * 64}}))
    with pytest.raises(ExportRefusedError):  # unreadable (incomplete) bundle.json is not "ours"
        _check_out(out, run, "a" * 64, force=False)
    _check_out(out, run, "a" * 64, force=True)
    BundleManifest("t", ["a"], PreprocessSpec().to_dict(), [], source={"weights_sha256": "a" * 64}).save(out)
    _check_out(out, run, "a" * 64, force=False)  # the same model's bundle: replaced
    with pytest.raises(ExportRefusedError, match="another model"):
        _check_out(out, run, "b" * 64, force=False)
    with pytest.raises(ExportRefusedError, match="contain the run dir"):
        _check_out(run, run, "a" * 64, force=True)


def test_replace_dir_swaps_in_new_bundle(tmp_path):
    out, new = tmp_path / "bundle", tmp_path / ".bundle.partial-1"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "bundle.json").write_text("{}")
    _replace_dir(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_cli_exits_nonzero_and_names_the_failing_artifact(monkeypatch, tmp_path):
    import typer
    from typer.testing import CliRunner

    import edgeft.export.bundle as bundle_mod
    from edgeft.export.bundle import ExportResult
    from edgeft.export.commands import register
    from edgeft.export.errors import ExportAccuracyError
    from edgeft.export.evaluate import Row

    rows = [
        Row("torch-fp32", "torch", "fp32", "model.safetensors", 14.0, 0.95, 1.0, 0.0, 0.0, "reference"),
        Row("onnx-int8", "onnx", "int8", "model.int8.onnx", 3.9, 0.90, 0.93, -5.0, 2.0, "rejected", "loses 5.00 pts"),
    ]
    calls = {}

    def fake_build_bundle(run, out, **kwargs):
        calls.update(kwargs)
        return ExportResult(tmp_path / "bundle", rows, ["onnx-int8"], ["a note"])

    monkeypatch.setattr(bundle_mod, "build_bundle", fake_build_bundle)
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """edgeft (export only)."""

    register(app)
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--max-drop", "2.5", "--formats", "onnx,triton"])
    assert isinstance(result.exception, ExportAccuracyError) and "onnx-int8" in str(result.exception)
    assert "rejected" in result.output and "Bundle written to" in result.output
    assert calls["max_drop"] == 2.5 and calls["accuracy_control"] is True and calls["formats"] == ["onnx", "triton"]
    CliRunner().invoke(app, ["export", str(tmp_path)])
    assert calls["max_drop"] == 1.0 and calls["accuracy_control"] is False and calls["formats"] is None


class _FakeTrt:
    """Just enough of the tensorrt module to record what build_plan asks for (TensorRT is not installable here)."""

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH, STRONGLY_TYPED = 0, 5

    class BuilderFlag:
        FP16 = "FP16"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def __init__(self, version: str):
        self.__version__, self.calls = version, {}
        calls = self.calls

        class _Input:
            name = "input"

        class _Network:
            def get_input(self, i):
                return _Input()

        class _Profile:
            def set_shape(self, name, lo, opt, hi):
                calls["profile"] = (name, lo, opt, hi)

        class _Config:
            def set_memory_pool_limit(self, pool, size):
                calls["workspace"] = size

            def set_flag(self, flag):
                calls.setdefault("flags", []).append(flag)

            def add_optimization_profile(self, profile):
                pass

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls["network_flags"] = flags
                return _Network()

            def create_builder_config(self):
                return _Config()

            def create_optimization_profile(self):
                return _Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                calls["parsed"] = path
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.mark.parametrize(("version", "explicit_batch"), [("8.6.1", True), ("10.3.0", False), ("11.0.0", False)])
def test_tensorrt_int8_build_is_strongly_typed_with_batch_profile(tmp_path, version, explicit_batch):
    from edgeft.export.tensorrt_build import PROFILE, build_plan

    trt = _FakeTrt(version)
    plan = build_plan(trt, tmp_path / "model.int8.onnx", 224, strongly_typed=True, fp16_flag=False)
    assert plan == b"PLAN"
    flags = trt.calls["network_flags"]
    assert flags & (1 << 5)
    assert bool(flags & 1) is explicit_batch
    assert "flags" not in trt.calls  # strongly typed: precisions come from the Q/DQ graph, no builder flags
    assert trt.calls["profile"] == ("input", *[(PROFILE[k], 3, 224, 224) for k in ("min", "opt", "max")])


def test_tensorrt_fp16_uses_builder_flag_only_on_weakly_typed_networks(tmp_path):
    from edgeft.export.tensorrt_build import build_plan

    trt = _FakeTrt("10.3.0")
    build_plan(trt, tmp_path / "model.onnx", 224, strongly_typed=False, fp16_flag=True)
    assert trt.calls["flags"] == ["FP16"] and trt.calls["network_flags"] == 0
