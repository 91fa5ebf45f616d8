"""bench.json contents (no timing asserts), the bench/predict CLIs, and the benchmark helpers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeft.cli import app
from edgeft.errors import EdgeftError
from edgeft.runtime.bench import current_rss_mb, parse_batches, peak_rss_mb, run_bench, synthetic_frames
from edgeft.runtime.preprocess import load_image

try:
    from runtime_fixtures import tiny_bundle  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.runtime_fixtures import tiny_bundle  # noqa: F401


def test_run_bench_writes_every_measurement(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    report = run_bench(
        tiny_bundle.bundle_dir,
        batches="1,3",
        backends=["onnx-fp32", "openvino-int8"],
        seconds=0.05,
        out=out,
        warmup=1,
        min_iters=2,
        n_images=6,
    )
    doc = json.loads(out.read_text())
    assert report.path == str(out)
    assert "test images of" in doc["images"]
    keys = {(r["backend"], r["artifact"], r["batch"]) for r in doc["results"]}
    assert keys == {
        ("onnxruntime:cpu", "onnx-fp32", 1),
        ("onnxruntime:cpu", "onnx-fp32", 3),
        ("openvino:CPU", "openvino-int8", 1),
        ("openvino:CPU", "openvino-int8", 3),
    }
    size = (tiny_bundle.bundle_dir / "model.fp32.onnx").stat().st_size / 2**20
    for r in doc["results"]:
        assert r["engine"]["throughput"] > 0 and r["engine"]["iterations"] >= 2
        assert r["engine"]["p99_ms"] >= r["engine"]["p50_ms"] > 0
        assert r["e2e"]["throughput"] > 0 and r["e2e"]["images"] >= 2 * r["batch"]
        assert r["e2e_request"]["iterations"] >= 2
        assert r["pipeline_overhead"] == pytest.approx(1 - r["e2e"]["throughput"] / r["engine"]["throughput"])
        assert r["peak_rss_mb_process"] > 0 and r["rss_mb_after_load"] > 0
        if r["artifact"] == "onnx-fp32":
            assert r["model_mb"] == pytest.approx(size)
    assert doc["machine"]["physical_cores"] >= 1 and doc["settings"]["batches"] == [1, 3]
    assert doc["preprocess_cpu_ms_per_image"] > 0
    hints = {(r["artifact"], r["batch"]): r["options"] for r in doc["results"]}
    assert hints[("openvino-int8", 1)] == {"hint": "LATENCY"} and hints[("openvino-int8", 3)] == {"hint": "THROUGHPUT"}
    assert hints[("onnx-fp32", 1)] == {}
    assert report.best(3).batch == 3


def test_bench_cli_and_bad_batches(tiny_bundle, tmp_path):
    out = tmp_path / "b.json"
    args = ["bench", str(tiny_bundle.bundle_dir), "--batch", "2", "--backends", "openvino:CPU", "--seconds", "0.02"]
    result = CliRunner().invoke(app, [*args, "--warmup", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {r["artifact"] for r in doc["results"]} == {"openvino-fp32", "openvino-fp16", "openvino-int8"}
    assert str(out) in result.output.replace("\n", "")
    with pytest.raises(EdgeftError, match="invalid batch sizes"):
        parse_batches("1,x")
    with pytest.raises(EdgeftError, match="invalid batch sizes"):
        parse_batches("0")
    assert parse_batches("32, 1,8,8") == [1, 8, 32]


def test_synthetic_frames_are_deterministic_jpegs():
    a, b = synthetic_frames(2, size=(64, 48)), synthetic_frames(2, size=(64, 48))
    assert a == b and a[0] != a[1]
    img = load_image(a[0])
    assert img.size == (64, 48) and img.mode == "RGB"


def test_rss_helpers_report_megabytes():
    assert current_rss_mb() > 1
    assert peak_rss_mb() >= current_rss_mb() * 0.5


def test_predict_cli_prints_json_lines(tiny_bundle, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    good = tiny_bundle.test_images[:2]
    result = CliRunner().invoke(
        app, ["predict", str(tiny_bundle.bundle_dir), str(good[0]), str(bad), str(good[1]), "--topk", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [x["source"] for x in lines] == [str(good[0]), str(bad), str(good[1])]
    assert lines[0]["label"] == tiny_bundle.test_labels[0] and len(lines[0]["topk"]) == 2
    assert lines[1]["label"] is None and lines[1]["error"]
    assert lines[2]["label"] == tiny_bundle.test_labels[1]


def test_predict_cli_errors_are_edgeft_errors(tiny_bundle, tmp_path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path), str(tiny_bundle.test_images[0])])
    assert result.exit_code != 0
    assert isinstance(result.exception, EdgeftError) and "bundle.json not found" in str(result.exception)


def test_e2e_uses_run_images_or_synthetic_frames(tmp_path):
    from edgeft.runtime.bench import encoded_images

    blobs, origin = encoded_images(None, ["a"], 3)
    assert len(blobs) == 3 and origin.startswith("3 synthetic")
    assert np.asarray(Image.open(io.BytesIO(blobs[0]))).shape == (480, 640, 3)
