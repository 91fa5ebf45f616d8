"""`edgeft export`: options reach the library, the latest run is found, and a gate failure exits 1 after writing."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeft.cli.app import app
from edgeft.core.errors import EXIT_GATE
from edgeft.core.manifests import BundleManifest
from edgeft.core.reports import ExportReport
from edgeft.engines.openvino import OpenVinoEngine


class _Stop(Exception):
    pass


def test_options_reach_build_bundle(monkeypatch, tmp_path):
    import edgeft.export.bundle as bundle_mod

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{}")  # enough for `locate` to call it a run dir
    calls: list[dict] = []

    def record(run_dir, out, **kwargs):
        calls.append({"run_dir": run_dir, "out": out, **kwargs})
        raise _Stop

    monkeypatch.setattr(bundle_mod, "build_bundle", record)
    args = ["export", str(run), "--max-drop", "2.5", "--formats", "onnx, Triton", "--no-fp16", "--out", "b"]
    assert isinstance(CliRunner().invoke(app, args).exception, _Stop)
    assert isinstance(CliRunner().invoke(app, ["export", str(run), "--calib-size", "50"]).exception, _Stop)
    first, second = calls
    assert first["run_dir"] == run and str(first["out"]) == "b"
    assert (first["max_drop"], first["accuracy_control"], first["formats"]) == (2.5, True, ["onnx", "triton"])
    assert (first["fp16"], first["int8"]) == (False, True)
    assert (second["max_drop"], second["accuracy_control"], second["formats"]) == (1.0, False, None)
    assert (second["calib_size"], second["calib_method"], second["force"]) == (50, "minmax", False)


class _RolledInt8(OpenVinoEngine):
    """OpenVINO whose INT8 outputs come out with the classes rotated by one: every prediction flips."""

    def check_output(self, out, n):
        out = super().check_output(out, n)
        return np.roll(out, 1, axis=1) if self.precision == "int8" else out


@pytest.mark.slow
def test_a_rejected_artifact_goes_to_rejected_and_the_cli_exits_1(tiny_run, tmp_path, monkeypatch):
    import edgeft.export.evaluate as evaluate_mod

    monkeypatch.setitem(evaluate_mod.ENGINE_BY_FORMAT, "openvino", _RolledInt8)
    out = tmp_path / "bundle"
    args = ["export", str(tiny_run), "--out", str(out), "--formats", "onnx,openvino,triton", "--no-fp16"]
    result = CliRunner().invoke(app, [*args, "--min-n", "10"])
    assert result.exit_code == EXIT_GATE and "openvino-int8" in result.stderr
    assert "Bundle written to" in result.output and "rejected openvino-int8-qdq" in result.output
    bundle = BundleManifest.load(out)
    assert {a.name for a in bundle.artifacts} == {"onnx-fp32", "onnx-int8", "onnx-int8-cpu", "openvino-fp32"}
    report = ExportReport.load(out / "export_report.json")
    assert set(report.failed) == {"openvino-int8", "openvino-int8-qdq"}
    for name in report.failed:
        row = next(r for r in report.rows if r.artifact == name)
        assert row.status == "rejected" and not row.gate.passed and row.gate.agreement == 0.0
        assert (out / "rejected" / row.path).is_file() and (out / "rejected" / row.path).with_suffix(".bin").is_file()
        assert not (out / row.path).exists()
    (triton_dir,) = (out / "triton").glob("tiny_*_openvino")
    triton_cfg = (triton_dir / "config.pbtxt").read_text()
    assert '"openvino-fp32"' in triton_cfg


@pytest.mark.slow
def test_int8_judged_on_too_few_images_is_not_certified(tiny_run, tmp_path):
    out = tmp_path / "bundle"
    args = ["export", str(tiny_run), "--out", str(out), "--formats", "onnx", "--no-fp16"]
    result = CliRunner().invoke(app, args)  # the default min_n (381 at 0.99) is far above the tiny test split
    assert result.exit_code == EXIT_GATE and "Traceback" not in result.output
    bundle = BundleManifest.load(out)
    assert [a.name for a in bundle.artifacts] == ["onnx-fp32"]
    assert set(bundle.rejected) == {"onnx-int8", "onnx-int8-cpu"}
    assert all("certifies 99.00% agreement from 381" in why for why in bundle.rejected.values())
    assert bundle.gate is not None and bundle.gate.min_n == 381


@pytest.mark.slow
def test_without_run_the_latest_run_is_exported_and_named(tiny_run, copy_dir, tmp_path, monkeypatch):
    run = copy_dir(tiny_run, "runs/folder/tiny")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["export", "--no-int8", "--no-fp16", "--formats", "onnx"])
    assert result.exit_code == 0, result.output
    assert f"Run: {run}" in result.stderr.replace("\n", "") and "latest" in result.stderr
    assert "onnx-fp32" in result.stdout and "pass" in result.stdout
    assert BundleManifest.load(run / "bundle").source.run_dir == str(run.resolve())
