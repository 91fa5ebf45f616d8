"""The whole chain on one real trained run: train -> export -> Predictor -> parity vs the PyTorch model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_bundle_dir(tiny_run, tmp_path_factory):
    from edgeft.export import build_bundle

    out = tmp_path_factory.mktemp("pipeline") / "bundle"
    result = build_bundle(tiny_run, out, formats=["onnx", "openvino"], fp16=False, max_drop=100.0)
    return result.bundle_dir


def test_predictor_matches_pytorch_on_the_test_split(tiny_run, tiny_bundle_dir):
    from edgeft.data.splits import read_splits, split_items
    from edgeft.runtime import Predictor
    from edgeft.runtime.preprocess import preprocess_path
    from edgeft.train.model import load_run

    model, manifest = load_run(tiny_run)
    items = split_items(read_splits(tiny_run), "test")
    x = np.stack([preprocess_path(p, manifest.preprocess_spec) for p, _ in items])
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    with Predictor(tiny_bundle_dir, backend="onnxruntime", precision="fp32", batch_size=8) as pred:
        preds = pred.predict([p for p, _ in items])
    assert [p.index for p in preds] == ref.argmax(1).tolist()
    assert np.abs(np.stack([p.logits for p in preds]) - ref).max() <= 1e-4
    assert all(p.label == manifest.classes[p.index] and p.error is None for p in preds)


def test_parity_cli_on_a_real_run_against_pytorch(tiny_run, tiny_bundle_dir, tmp_path):
    from typer.testing import CliRunner

    from edgeft.cli import app

    r = CliRunner().invoke(
        app, ["parity", str(tiny_bundle_dir), "--out", str(tmp_path), "--min-agreement", "0.8", "--max-drop", "100"]
    )
    doc = json.loads((tmp_path / "parity.json").read_text())
    assert doc["reference"].startswith("torch"), doc["reference"]
    b = doc["backends"]
    onnx32, ov32 = b["onnxruntime:cpu/onnx-fp32"], b["openvino:CPU/openvino-fp32"]
    for fp32 in (onnx32, ov32):
        assert fp32["agreement"] == 1.0 and fp32["max_abs_logit_diff"] <= 1e-4 and fp32["cosine"] > 0.999999
    int8 = [v for k, v in b.items() if "int8" in k]
    assert int8 and all(v["agreement"] >= 0.8 for v in int8)
    assert r.exit_code == (0 if doc["passed"] else 1), r.output
    strict = CliRunner().invoke(
        app, ["parity", str(tiny_bundle_dir), "--out", str(tmp_path / "s"), "--min-agreement", "1.0"]
    )
    strict_doc = json.loads((tmp_path / "s" / "parity.json").read_text())
    flips = sum(len(v["flipped"]) for k, v in strict_doc["backends"].items() if "int8" in k)
    assert strict.exit_code == (1 if flips else 0)  # the gate fails exactly when some INT8 prediction flipped
