"""The whole contract on the real path: train -> export -> bundle -> Predictor gives PyTorch's answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_predictor_matches_pytorch_on_the_test_split(tiny_run, tiny_bundle):
    from edgeft.core.manifests import ModelManifest
    from edgeft.data.evalsets import run_split
    from edgeft.models.classifier import load_run
    from edgeft.serve.predictor import Predictor

    manifest = ModelManifest.load(tiny_run)
    evalset = run_split(tiny_run, manifest.classes)
    x, kept = evalset.load(manifest.preprocess)
    model, _ = load_run(tiny_run)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    for backend in ("onnxruntime", "openvino"):
        with Predictor(tiny_bundle, backend=backend, precision="fp32", batch_size=5) as pred:
            preds = pred.predict(kept.paths)
        assert [p.index for p in preds] == ref.argmax(1).tolist(), backend
        assert np.abs(np.stack([p.logits for p in preds]) - ref).max() <= 1e-4, backend
        thr = manifest.calibration.unknown_threshold
        assert all(p.error is None and p.unknown == (p.prob < thr) for p in preds)
        assert all(p.label == ("unknown" if p.unknown else manifest.classes[p.index]) for p in preds)
    assert (ref.argmax(1) == kept.label_indices(manifest.classes)).mean() > 0.9  # the run learnt its task


def test_every_artifact_the_bundle_ships_passed_the_same_gate_parity_applies(tiny_bundle, tmp_path):
    from edgeft.check.parity import run_parity
    from edgeft.core.manifests import BundleManifest

    shipped = {a.name: a.gate for a in BundleManifest.load(tiny_bundle).artifacts}
    assert shipped and all(g is not None and g.passed for g in shipped.values())
    report = run_parity(tiny_bundle, out=tmp_path)
    verdicts = {b.artifact: b.gate.passed for b in report.backends.values()}
    assert {name: verdicts[name] for name in shipped if name in verdicts} == dict.fromkeys(
        [n for n in shipped if n in verdicts], True
    )


def test_the_literal_commands_in_an_empty_folder(tmp_path):
    """`edgeft train fish`, `export --int8`, `parity`, `serve --camera`, `serve --source video.mp4`, as typed."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import cv2

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "80"}

    def edgeft(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "edgeft.cli.app", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done

    train = edgeft("train", "fish", "--backbone", "tinynet", "--synth-per-class", "12", "--epochs", "3")
    assert train.returncode == 0 and "Run dir: runs/fish/exp" in train.stdout, train.stderr
    export = edgeft("export", "--int8")
    assert export.returncode in (0, 1), export.stderr  # 1: an INT8 artifact missed the gate and was left out
    assert "the latest under runs/" in export.stderr and (tmp_path / "runs/fish/exp/bundle/bundle.json").is_file()
    parity = edgeft("parity")
    assert parity.returncode == 0 and "parity passed" in parity.stdout, parity.stdout + parity.stderr
    assert "Bundle: runs/fish/exp/bundle (of the latest run under runs/)" in parity.stderr

    t0 = time.monotonic()
    camera = edgeft("serve", "--camera", "--max-frames", "2", "--status-every", "0", timeout=60)
    if not list(Path("/dev").glob("video*")):
        assert camera.returncode == 2 and time.monotonic() - t0 < 20
        assert camera.stderr.count("error:") == 1 and "cannot open camera 0" in camera.stderr
        assert "VIDEOIO" not in camera.stderr

    writer = cv2.VideoWriter(str(tmp_path / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (320, 240))
    for i in range(6):
        writer.write(np.full((240, 320, 3), 40 * i, np.uint8))
    writer.release()
    stream = edgeft("serve", "--source", "video.mp4", "--status-every", "0")
    assert stream.returncode == 0, stream.stderr
    assert [json.loads(line)["frame"] for line in stream.stdout.splitlines()] == list(range(6))
