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
