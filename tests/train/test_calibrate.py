"""Temperature scaling, ECE and the unknown threshold on logits whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.core.numeric import softmax
from edgeft.train.calibrate import calibrate, ece_noise_floor, fit_temperature, reliability, unknown_threshold


def _overconfident(n: int, true_t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z whose labels are drawn from softmax(z / true_t): T = true_t is the calibrated temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3.0, (n, 5)).astype(np.float32)
    p = softmax(z, true_t)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return z, labels


def test_temperature_recovers_the_true_one_and_ece_drops():
    z, y = _overconfident(20_000, 2.5, seed=0)
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.05)
    zt, yt = _overconfident(5_000, 2.5, seed=1)
    out = calibrate(z, y, zt, yt, false_reject_rate=0.05)
    assert out["ece_test_before"] > 0.1  # T = 1 is badly overconfident here
    assert out["ece_test_after"] < 0.02
    assert out["temperature"] == pytest.approx(t)


def test_ece_of_a_perfectly_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.3, 1.0, 50_000)
    correct = rng.uniform(size=conf.size) < conf  # right with probability = confidence
    probs = np.stack([conf, 1 - conf], 1)
    labels = np.where(correct, 0, 1)
    assert reliability(probs, labels)[0] < 0.01
    assert reliability(probs, 1 - labels)[0] > 0.3  # the same confidences, always wrong


def test_ece_noise_floor_is_what_perfect_calibration_reads_on_n_images():
    """The floor matches ECE measured by `reliability` on labels drawn from the model's own confidences,
    shrinks as n grows (roughly as 1/sqrt(n)), and is zero for certain answers."""
    z, _ = _overconfident(200, 1.0, seed=4)
    probs = softmax(z)
    rng = np.random.default_rng(9)
    drawn = [reliability(probs, np.array([rng.choice(5, p=row) for row in probs]))[0] for _ in range(300)]
    assert ece_noise_floor(probs) == pytest.approx(float(np.mean(drawn)), abs=0.01)
    assert 0.03 < ece_noise_floor(probs) < 0.2
    many = np.tile(probs, (25, 1))  # the same confidences on 5,000 images
    assert ece_noise_floor(many) < ece_noise_floor(probs) / 3
    assert ece_noise_floor(np.eye(5)[[0, 1, 2, 3, 4] * 20]) == 0.0
    assert ece_noise_floor(np.zeros((0, 5))) is None
    out = calibrate(z, np.zeros(200, int), z, np.zeros(200, int))
    assert out["ece_test_floor"] == pytest.approx(ece_noise_floor(softmax(z, out["temperature"])))


def test_unknown_threshold_rejects_the_stated_share_of_correct_answers():
    z, y = _overconfident(4_000, 1.0, seed=3)
    probs = softmax(z)
    thr = unknown_threshold(probs, y, 0.1)
    zt, yt = _overconfident(4_000, 1.0, seed=4)
    pt = softmax(zt)
    correct = pt.argmax(1) == yt
    rejected = pt.max(1)[correct] < thr
    assert rejected.mean() == pytest.approx(0.1, abs=0.02)
    assert unknown_threshold(probs, y, 0.0) is None


def test_no_errors_on_held_out_images_claims_what_n_correct_answers_support():
    rng = np.random.default_rng(5)
    perfect = rng.integers(0, 5, 500)
    z = rng.normal(0, 0.3, (500, 5))
    z[np.arange(500), perfect] += 4.0  # a clear margin ...
    perfect = z.argmax(1)  # ... and labels that every answer gets right
    t = fit_temperature(z, perfect)
    assert 0.05 < t < 20.0  # not driven to the bound, as the NLL would
    assert softmax(z, t).max(1).mean() == pytest.approx(500.5 / 501, abs=1e-4)
