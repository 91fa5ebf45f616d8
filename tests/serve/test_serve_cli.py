"""The `predict` and `serve` commands through the real CLI: outputs, BUNDLE/RUN resolution, refused option combinations."""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest
from servekit import class_frames, png_bytes
from typer.testing import CliRunner

from edgeft.cli.app import app
from edgeft.core.manifests import BundleManifest
from edgeft.serve.schema import FrameRecord, Prediction

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    for i, rgb in enumerate(class_frames(8, seed=3)):
        (root / f"frame_{i:04d}.png").write_bytes(png_bytes(rgb))
    return root


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(result, message: str) -> None:
    """Bad usage: exit code 2, one paragraph with a fix on stderr, never a traceback."""
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.output


def test_predict_prints_one_prediction_per_line(tiny_bundle, test_images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    good = [p for p, _ in test_images[:2]]
    result = invoke("predict", tiny_bundle, good[0], bad, good[1], "--topk", "2", "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    lines = [Prediction.model_validate_json(line) for line in result.stdout.splitlines()]
    assert [p.source for p in lines] == [str(good[0]), str(bad), str(good[1])]
    assert lines[0].ok and len(lines[0].topk) == 2 and lines[0].logits is None
    assert not lines[1].ok and lines[1].label is None and lines[1].reason
    assert "onnxruntime:cpu fp32 (onnx-fp32)" in result.stderr
    with_logits = invoke("predict", tiny_bundle, good[0], "--logits")
    assert len(json.loads(with_logits.stdout)["logits"]) == len(BundleManifest.load(tiny_bundle).classes)


def test_predict_warns_loudly_when_named_onto_an_artifact_that_failed_its_gate(tiny_bundle, copy_dir, test_images):
    from edgeft.core.manifests import GateRecord

    bdir = copy_dir(tiny_bundle)
    bundle = BundleManifest.load(bdir)
    for art in bundle.artifacts:
        if art.name in ("onnx-int8", "onnx-int8-cpu"):
            art.gate = GateRecord(passed=False, verdict="fail", n=400, agreement=0.9, reasons=["planted: 0.9 < 0.99"])
    bundle.save(bdir)
    result = invoke("predict", bdir, test_images[0][0], "--backend", "onnxruntime", "--precision", "int8")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert re.search(r"WARNING: artifact onnx-int8(-cpu)? FAILED its gate \(planted: 0.9 < 0.99\)", result.stderr)
    ok = invoke("predict", tiny_bundle, test_images[0][0], "--backend", "onnxruntime", "--precision", "int8")
    assert ok.exit_code == 0 and "WARNING" not in ok.stderr


def test_fast_preprocess_warns_until_parity_fast_preprocess_passed_the_artifact(tiny_bundle, copy_dir, test_images):
    from edgeft.check.parity import run_parity

    bdir = copy_dir(tiny_bundle)
    image = test_images[0][0]
    args = ("predict", bdir, image, "--backend", "onnxruntime", "--precision", "fp32", "--fast-preprocess")
    unchecked = invoke(*args)
    assert unchecked.exit_code == 0 and Prediction.model_validate_json(unchecked.stdout).ok
    assert "WARNING: --fast-preprocess was never checked on this bundle" in unchecked.stderr
    assert "edgeft parity --fast-preprocess" in unchecked.stderr
    before = (bdir / "parity.json").read_bytes() if (bdir / "parity.json").exists() else None
    report = run_parity(bdir, backends=["onnx-fp32"], fast_preprocess=True)
    assert (bdir / "parity.fast.json").is_file()
    assert ((bdir / "parity.json").read_bytes() if before is not None else None) == before, "the exact verdict stays"
    checked = invoke(*args)
    assert report.passed and "WARNING" not in checked.stderr
    doc = json.loads((bdir / "parity.fast.json").read_text())
    other = dict(doc, bundle_sha256="0" * 64)  # a verdict copied from another bundle does not count here
    (bdir / "parity.fast.json").write_text(json.dumps(other))
    assert "was not written by `edgeft parity --fast-preprocess` for this bundle" in invoke(*args).stderr
    for b in doc["backends"].values():
        b["gate"].update(passed=False, verdict="fail", reasons=["planted: 0.99 < 0.999"])
    (bdir / "parity.fast.json").write_text(json.dumps(doc))
    failed = invoke(*args)
    assert failed.exit_code == 0 and "Traceback" not in failed.output
    assert "WARNING: --fast-preprocess FAILED parity on onnx-fp32 (planted: 0.99 < 0.999)" in failed.stderr
    exact = invoke(*args[:-1])
    assert "WARNING" not in exact.stderr, "without --fast-preprocess the fast verdict is irrelevant"


def test_predict_and_serve_find_the_latest_run_and_say_so(
    tiny_run, tiny_bundle, test_images, folder, tmp_path, monkeypatch
):
    runs = tmp_path / "runs" / "folder"
    shutil.copytree(tiny_run, runs / "tiny")  # with its bundle/ inside
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", test_images[0][0])
    assert result.exit_code == 0, result.output
    assert "of the latest run under runs/" in result.stderr and "runs/folder/tiny/bundle" in result.stderr
    assert Prediction.model_validate_json(result.stdout).ok
    result = invoke("serve", "--source", folder, "--max-frames", "2", "--status-every", "0", "--jsonl", "out.jsonl")
    assert result.exit_code == 0, result.output
    assert "of the latest run under runs/" in result.stderr


def test_a_run_without_a_bundle_says_to_export_first(tiny_run, copy_dir, folder, test_images):
    run = copy_dir(tiny_run)
    shutil.rmtree(run / "bundle")
    refused(invoke("serve", run, "--source", folder), "edgeft export")
    refused(invoke("predict", run, test_images[0][0]), "edgeft export")


def test_serve_a_folder_writes_jsonl_and_annotated_images(tiny_bundle, folder, tmp_path):
    out, save = tmp_path / "preds.jsonl", tmp_path / "saved [red]"
    args = ["serve", tiny_bundle, "--source", folder, "--jsonl", out, "--save", save, "--max-frames", "5"]
    result = invoke(*args, "--backend", "onnxruntime", "--status-every", "0")
    assert result.exit_code == 0, result.output
    records = [FrameRecord.model_validate_json(line) for line in out.read_text().splitlines()]
    assert [r.frame for r in records] == list(range(5)) and all(r.prediction.ok for r in records)
    assert sorted(p.name for p in save.iterdir()) == [f"frame_{i:04d}.png" for i in range(5)]
    flat = result.output.replace("\n", "")
    assert str(out) in flat and str(save) in flat, "paths are printed literally (markup escaped)"
    assert "processed 5 frames" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--camera", "0", "--http", "127.0.0.1:0"], "exactly one input mode"),
        ([], "exactly one input mode; got none"),
        (["--http", "127.0.0.1:0", "--jsonl", "x.jsonl"], "--jsonl only apply to --camera/--source"),
        (["--source", "{video}", "--reconnect"], "--reconnect applies to live sources"),
        (["--source", "{folder}", "--parity-sample", "2"], "--parity-sample: input should be less than or equal to 1"),
        (["--source", "{folder}", "--batch-size", "0"], "--batch-size: input should be greater than or equal to 1"),
        (["--http", "127.0.0.1:0", "--max-body-mb", "0"], "--max-body-mb: input should be greater than 0"),
        (["--http", "localhost:http"], "is not HOST:PORT"),
        (["--source", "{missing}"], "source not found"),
    ],
)
def test_serve_refuses_bad_options(tiny_bundle, folder, tmp_path, args, message):
    video = tmp_path / "clip.avi"
    video.write_bytes(b"not a video, but a file")
    values = {"video": video, "folder": folder, "missing": tmp_path / "missing.avi"}
    refused(invoke("serve", tiny_bundle, *[a.format(**values) for a in args]), message)


def test_predict_without_images_is_refused(tiny_bundle):
    refused(invoke("predict", tiny_bundle), "no images given")


def test_predict_reads_a_folder_for_its_images(tiny_bundle, folder, tmp_path):
    result = invoke("predict", tiny_bundle, folder, "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    sources = [Prediction.model_validate_json(line).source for line in result.stdout.splitlines()]
    assert sources == [str(folder / f"frame_{i:04d}.png") for i in range(8)]
    (tmp_path / "empty").mkdir()
    refused(invoke("predict", tiny_bundle, tmp_path / "empty"), "holds no images")


def test_predict_fails_when_no_input_could_be_classified(tiny_bundle, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    result = invoke("predict", tiny_bundle, bad, tmp_path / "typo.jpg", "--backend", "onnxruntime")
    refused(result, "none of the 2 input(s) could be classified")
    assert [Prediction.model_validate_json(line).ok for line in result.stdout.splitlines()] == [False, False]


def test_serve_http_that_cannot_bind_names_the_cause(tiny_bundle):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        in_use = invoke("serve", tiny_bundle, "--http", f"127.0.0.1:{port}", "--backend", "onnxruntime")
    refused(in_use, f"cannot bind 127.0.0.1:{port}")
    assert "pick another port" in in_use.stderr and "stopped:" not in in_use.stderr  # it never started
    foreign = invoke("serve", tiny_bundle, "--http", "192.0.2.1:8080", "--backend", "onnxruntime")  # TEST-NET-1
    refused(foreign, "cannot bind 192.0.2.1:8080")
    assert "not an address of this machine" in foreign.stderr and "stopped:" not in foreign.stderr
