"""bench.json contents (what was measured, with which options, and the gate verdict of each artifact) and the CLI.

No assertion depends on how fast anything ran: timing belongs in benchmarks/.
"""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeft.cli.app import app
from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import BundleManifest, GateRecord
from edgeft.core.preprocess import load_image
from edgeft.core.reports import BenchReport
from edgeft.serve.bench import BenchSettings, parse_batches, run_bench, synthetic_frames

QUICK = {"seconds": 0.02, "warmup": 1, "min_iters": 2, "rounds": 1, "n_images": 6}


@pytest.mark.slow
def test_bench_json_has_every_measurement_and_the_recorded_gate(tiny_bundle, copy_dir, tmp_path):
    bdir = copy_dir(tiny_bundle)
    bundle = BundleManifest.load(bdir)
    bundle.artifact("openvino-int8").gate = GateRecord(passed=False, verdict="fail", n=24, agreement=0.5)
    bundle.save(bdir)
    settings = BenchSettings.build(batches="1,3", backends=["onnx-fp32", "openvino-int8"], **QUICK)
    report = run_bench(bdir, settings, tmp_path / "bench.json")
    assert BenchReport.load(tmp_path / "bench.json") == report
    assert "test images of" in report.images
    keys = {(r.backend, r.artifact, r.batch) for r in report.results}
    assert keys == {
        ("onnxruntime:cpu", "onnx-fp32", 1),
        ("onnxruntime:cpu", "onnx-fp32", 3),
        ("openvino:CPU", "openvino-int8", 1),
        ("openvino:CPU", "openvino-int8", 3),
    }
    recorded = BundleManifest.load(bdir)
    size = (bdir / recorded.artifact("onnx-fp32").path).stat().st_size / 2**20
    for r in report.results:
        assert r.gate == recorded.artifact(r.artifact).gate, "the verdict export recorded, not a recomputation"
        assert r.engine.iterations >= 2 and r.e2e_request.iterations >= 2 and r.e2e["images"] >= 2 * r.batch
        assert r.peak_rss_mb_process > 0 and r.rss_mb_after_load is not None and r.load_seconds > 0
        if r.artifact == "onnx-fp32":
            assert r.model_mb == pytest.approx(size)
    assert not next(r for r in report.results if r.artifact == "openvino-int8").gate.passed
    options = {(r.artifact, r.batch): r.options for r in report.results}
    assert options[("openvino-int8", 1)] == {"hint": "LATENCY"}
    assert options[("openvino-int8", 3)] == {"hint": "THROUGHPUT"}
    assert options[("onnx-fp32", 1)] == {}
    assert report.settings["batches"] == [1, 3] and report.machine["physical_cores"] >= 1
    assert report.preprocess_cpu_ms_per_image > 0
    assert report.best(3).batch == 3
    with Image.open(tmp_path / "accuracy_latency.png") as chart:  # one panel per batch size
        assert chart.format == "PNG" and chart.width > chart.height


@pytest.mark.slow
def test_bench_cli_prints_the_table_with_the_gate_column(tiny_bundle, copy_dir):
    bdir = copy_dir(tiny_bundle)
    bundle = BundleManifest.load(bdir)
    bundle.artifact("openvino-int8").gate = GateRecord(passed=False, verdict="fail", n=24, agreement=0.5)
    bundle.save(bdir)
    args = ["bench", str(bdir), "--batch", "2", "--backends", "openvino:CPU", "--seconds", "0.02", "--warmup", "1"]
    result = CliRunner().invoke(app, [*args, "--hint", "LATENCY"])
    assert result.exit_code == 0, result.output
    report = BenchReport.load(bdir / "bench.json")
    artifacts = {a.name for a in BundleManifest.load(bdir).artifacts if a.format == "openvino"}
    assert {r.artifact for r in report.results} == artifacts
    assert all(r.options == {"hint": "LATENCY"} for r in report.results), "--hint reaches OpenVINO"
    assert result.stdout.count("pass 1.000") == len(artifacts) - 1 and result.stdout.count("FAIL 0.500") == 1
    assert str(bdir / "bench.json") in result.stdout.replace("\n", "")


@pytest.mark.slow
def test_bench_cli_refuses_a_bad_batch_list(tiny_bundle):
    for bad in ("1,x", "0", ""):
        result = CliRunner().invoke(app, ["bench", str(tiny_bundle), "--batch", bad])
        assert result.exit_code == 2 and "invalid batch sizes" in result.stderr and "Traceback" not in result.output


def test_batch_lists_and_settings_are_validated():
    assert parse_batches("32, 1,8,8") == [1, 8, 32]
    with pytest.raises(EdgeftError, match="invalid batch sizes"):
        parse_batches([1, -2])
    with pytest.raises(EdgeftError, match="--seconds: input should be greater than 0"):
        BenchSettings.build(seconds=0)


def test_synthetic_frames_are_deterministic_jpegs():
    a, b = synthetic_frames(2, size=(64, 48)), synthetic_frames(2, size=(64, 48))
    assert a == b and a[0] != a[1]
    img = load_image(a[0])
    assert img.size == (64, 48) and img.mode == "RGB"


@pytest.mark.slow
def test_bench_on_decoded_frames_with_the_fast_preprocessing(tiny_bundle, copy_dir):
    bdir = copy_dir(tiny_bundle)
    args = ["bench", str(bdir), "--batch", "2", "--backends", "onnx-fp32", "--seconds", "0.02", "--warmup", "1"]
    result = CliRunner().invoke(app, [*args, "--input", "frames", "--fast-preprocess"])
    assert result.exit_code == 0, result.output
    report = BenchReport.load(bdir / "bench.json")
    assert report.images == "64 decoded 640x480 frames"
    assert report.settings["input"] == "frames" and report.settings["fast_preprocess"] is True
    [row] = report.results
    assert row.e2e["images"] >= 2 and report.preprocess_cpu_ms_per_image > 0
    assert not row.image_input and report.image_preprocess_cpu_ms_per_image is None  # ONNX Runtime takes tensors
    assert "uint8 image" not in result.output
    ov = [*args[:5], "openvino-fp32", *args[6:], "--input", "frames", "--fast-preprocess"]
    result = CliRunner().invoke(app, ov)
    assert result.exit_code == 0, result.output
    report = BenchReport.load(bdir / "bench.json")
    [row] = report.results
    assert row.image_input and "[uint8 image input]" in row.describe and row.e2e["images"] >= 2
    assert report.image_preprocess_cpu_ms_per_image > 0 and "up to the uint8 image" in result.output
    refused = CliRunner().invoke(app, [*args, "--input", "camera"])
    assert refused.exit_code == 2 and "--input" in refused.stderr and "Traceback" not in refused.output
