"""The unknown-species threshold: fitted at training, carried by bundle.json, honoured by the Predictor."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.core.manifests import BundleManifest, ModelManifest
from edgeft.serve.predictor import Predictor

pytestmark = pytest.mark.slow


class _NoEngine:
    def infer(self, batch):  # pragma: no cover - predictions() is called with logits directly
        raise AssertionError("not used")

    def close(self) -> None:
        pass


def _predictor(bundle: BundleManifest, **kw) -> Predictor:
    return Predictor.from_engine(_NoEngine(), bundle, topk=2, **kw)


def test_threshold_travels_from_run_to_bundle(tiny_run, tiny_bundle):
    run_cal = ModelManifest.load(tiny_run).calibration
    assert run_cal.unknown_threshold is not None and 0.0 < run_cal.unknown_threshold < 1.0
    assert run_cal.fitted_on.startswith("calib (")
    assert BundleManifest.load(tiny_bundle).calibration == run_cal


def test_low_confidence_is_answered_unknown_with_topk_kept(tiny_bundle):
    bundle = BundleManifest.load(tiny_bundle)
    n = len(bundle.classes)
    bundle = bundle.model_copy(
        update={"calibration": bundle.calibration.model_copy(update={"temperature": 1.0, "unknown_threshold": 0.6})}
    )
    sure = np.full(n, -5.0, np.float32)
    sure[1] = 5.0  # top-1 probability ~1
    unsure = np.zeros(n, np.float32)
    unsure[2] = 0.1  # nearly uniform: top-1 probability ~1/n < 0.6
    with _predictor(bundle) as p:
        a, b = p.predictions(["sure", "unsure"], np.stack([sure, unsure]))
    assert (a.label, a.index, a.unknown) == (bundle.classes[1], 1, False)
    assert (b.label, b.index, b.unknown) == ("unknown", 2, True)
    assert b.prob < 0.6 and [t.label for t in b.topk][0] == bundle.classes[2] and len(b.topk) == 2
    with _predictor(bundle, unknown_below=0.0) as p:  # overridden: off
        assert p.predictions(["unsure"], unsure[None])[0].label == bundle.classes[2]
    with _predictor(bundle, unknown_below=0.9999) as p:  # overridden: stricter than the bundle
        assert p.predictions(["sure"], sure[None])[0].unknown
