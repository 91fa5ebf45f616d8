"""Calibrated answers: temperature scaling and the "unknown species" threshold, fitted on held-out images.

Both are fitted on the calib split (never trained on, never test): the temperature T minimises the
negative log-likelihood of softmax(logits / T); the threshold is the confidence below which an answer
is reported as `unknown`, chosen so that `false_reject_rate` of the correct held-out answers fall below.
ECE (expected calibration error, 15 equal-width confidence bins) is reported before and after, next to its
noise floor: the ECE a perfectly calibrated model with the same confidences would show on that many images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeft.core.numeric import softmax
from edgeft.core.plotting import pyplot

ECE_BINS = 15
FALSE_REJECT_RATE = 0.05


def nll(logits: np.ndarray, labels: np.ndarray, t: float = 1.0) -> float:
    p = softmax(logits, t)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T NLL(softmax(logits / T)), searched on log T in [1/20, 20] (coarse grid, then golden section).

    Without a single error on the n held-out images the NLL keeps falling as T -> 0 (every answer becomes
    certain). Then T is set so that the mean top-1 probability equals (n + 0.5) / (n + 1), the accuracy
    those n correct answers support, instead of certainty.
    """
    if len(labels) == 0:
        return 1.0
    if bool((logits.argmax(axis=1) == labels).all()):
        return _temperature_for_confidence(logits, (len(labels) + 0.5) / (len(labels) + 1))
    grid = np.linspace(np.log(0.05), np.log(20.0), 61)
    losses = [nll(logits, labels, float(np.exp(g))) for g in grid]
    k = int(np.argmin(losses))
    lo, hi = grid[max(0, k - 1)], grid[min(len(grid) - 1, k + 1)]
    phi = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if nll(logits, labels, float(np.exp(a))) < nll(logits, labels, float(np.exp(b))):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def _temperature_for_confidence(logits: np.ndarray, target: float) -> float:
    """T whose mean top-1 probability is `target` (it falls as T grows), by bisection on log T."""
    lo, hi = np.log(0.05), np.log(20.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        if softmax(logits, float(np.exp(mid))).max(axis=1).mean() > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp((lo + hi) / 2))


def _bin_index(conf: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges, bin of each confidence): equal-width bins (lo, hi]; a confidence of 0 joins the first."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return edges, np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """(ECE, per-bin rows {lo, hi, n, confidence, accuracy}) of top-1 confidences."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges, which = _bin_index(conf, bins)
    rows, ece = [], 0.0
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        m = which == k
        if not m.any():
            continue
        c, a = float(conf[m].mean()), float(correct[m].mean())
        ece += m.mean() * abs(c - a)
        rows.append({"lo": float(lo), "hi": float(hi), "n": int(m.sum()), "confidence": c, "accuracy": a})
    return float(ece), rows


def ece_noise_floor(probs: np.ndarray, bins: int = ECE_BINS, sims: int = 400, seed: int = 0) -> float | None:
    """Mean ECE of a perfectly calibrated model with these top-1 confidences on this many images.

    Each simulation draws "correct" with probability equal to the confidence (what perfect calibration
    means) and measures ECE as `reliability` does (the same `_bin_index`). Binned ECE is biased upwards on few images, so an ECE
    near this floor is as calibrated as n images can show (at n = 207 it is about 0.07).
    """
    if len(probs) == 0:
        return None
    conf = probs.max(axis=1)
    _, which = _bin_index(conf, bins)
    rng = np.random.default_rng(seed)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    total = 0.0
    for _ in range(sims):  # one simulation at a time: memory stays O(n) on large test sets
        acc_sum = np.bincount(which, weights=(rng.random(len(conf)) < conf).astype(float), minlength=bins)
        total += float(np.abs(conf_sum - acc_sum).sum())
    return total / sims / len(conf)


def unknown_threshold(probs: np.ndarray, labels: np.ndarray, false_reject_rate: float) -> float | None:
    """Confidence under which `false_reject_rate` of the correct answers fall (None without correct answers)."""
    correct = probs.argmax(axis=1) == labels
    if not correct.any() or false_reject_rate <= 0:
        return None
    return float(np.quantile(probs.max(axis=1)[correct], false_reject_rate))


def calibrate(
    held_logits: np.ndarray,
    held_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    false_reject_rate: float = FALSE_REJECT_RATE,
) -> dict:
    """Temperature and threshold from the held-out set; ECE before/after on it and on test; what the
    threshold does on test (share marked unknown, accuracy of the answers kept)."""
    t = fit_temperature(held_logits, held_labels)
    held_p, held_p1 = softmax(held_logits, t), softmax(held_logits, 1.0)
    test_p, test_p1 = softmax(test_logits, t), softmax(test_logits, 1.0)
    thr = unknown_threshold(held_p, held_labels, false_reject_rate)
    kept = test_p.max(axis=1) >= (thr or 0.0)
    has_test = len(test_labels) > 0
    test_before = reliability(test_p1, test_labels) if has_test else (None, [])
    test_after = reliability(test_p, test_labels) if has_test else (None, [])
    return {
        "temperature": t,
        "unknown_threshold": thr,
        "false_reject_rate": false_reject_rate,
        "fitted_on": f"calib ({len(held_labels)} images)",
        "ece_calib_before": reliability(held_p1, held_labels)[0],
        "ece_calib_after": reliability(held_p, held_labels)[0],
        "ece_test_before": test_before[0],
        "ece_test_after": test_after[0],
        "ece_test_floor": ece_noise_floor(test_p) if has_test else None,
        "test_unknown_share": float(1.0 - kept.mean()) if len(kept) else None,
        "test_accuracy_of_kept": float((test_p.argmax(1) == test_labels)[kept].mean()) if kept.any() else None,
        "reliability_test": test_after[1],
        "reliability_test_before": test_before[1],
    }


def plot_reliability(before: list[dict], after: list[dict], path: Path, title: str = "") -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for rows, name in ((before, "T = 1"), (after, "calibrated T")):
        if rows:
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
