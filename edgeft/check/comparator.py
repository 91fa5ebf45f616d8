"""THE comparator: candidate logits against reference logits on the same images.

Export's acceptance, `edgeft parity`, the bench's agreement column and the online monitor all call
`compare` and then the gate (edgeft.check.gate), so they cannot disagree. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.numeric import margins, softmax, topk_indices
from edgeft.core.reports import Comparison, Flip

Z_BY_CONFIDENCE = {0.90: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest near 0 and 1, where agreement lives."""
    if n <= 0:
        return 0.0, 1.0
    z = Z_BY_CONFIDENCE.get(round(confidence, 2))
    if z is None:
        raise EdgeftError(f"confidence {confidence} is not one of {sorted(Z_BY_CONFIDENCE)}", fix="use 0.95")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def require_close(reference: np.ndarray, candidate: np.ndarray, atol: float, what: str, path: str | Path) -> float:
    """max |Δ| between two engines' outputs on the same input; an error naming `path` above atol."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise EdgeftError(f"{what}: output shapes differ {reference.shape} vs {candidate.shape}", path=path)
    diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    if not diff <= atol:
        raise EdgeftError(
            f"{what} disagrees with torch: max |Δ| {diff:.3g} > {atol:g}", path=path, fix="report this with the run dir"
        )
    return diff


def _flips(
    ref_pred: np.ndarray,
    cand_pred: np.ndarray,
    p_ref: np.ndarray,
    p_cand: np.ndarray,
    classes: Sequence[str],
    labels: np.ndarray | None,
    sources: Sequence[str],
) -> tuple[list[Flip], dict[str, dict[str, int]]]:
    margin = margins(p_ref)
    flipped, matrix = [], {}
    for i in np.nonzero(ref_pred != cand_pred)[0].tolist():
        a, b = classes[ref_pred[i]], classes[cand_pred[i]]
        matrix.setdefault(a, {})
        matrix[a][b] = matrix[a].get(b, 0) + 1
        flipped.append(
            Flip(
                source=sources[i],
                label=classes[labels[i]] if labels is not None and labels[i] >= 0 else None,
                reference=a,
                candidate=b,
                reference_prob=round(float(p_ref[i, ref_pred[i]]), 6),
                candidate_prob=round(float(p_cand[i, cand_pred[i]]), 6),
                reference_margin=round(float(margin[i]), 6),
            )
        )
    flipped.sort(key=lambda f: -f.reference_margin)  # the most confident flips first: those are the worrying ones
    return flipped, matrix


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    classes: Sequence[str],
    labels: np.ndarray | None = None,
    sources: Sequence[str] | None = None,
    k: int = 5,
    confidence: float = 0.95,
) -> Comparison:
    """Every agreement metric of candidate logits against reference logits on the same images.

    labels: class indices (-1 = unknown); accuracy is computed on the labelled rows only.
    """
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise EdgeftError(f"logit shapes differ: reference {ref.shape} vs candidate {cand.shape}", fix="report a bug")
    n, c = ref.shape
    k = min(k, c)
    sources = list(sources) if sources is not None else [f"#{i}" for i in range(n)]
    ref_pred, cand_pred = ref.argmax(1), cand.argmax(1)
    p_ref, p_cand = softmax(ref), softmax(cand)
    overlap = [
        len(set(a) & set(b)) / k
        for a, b in zip(topk_indices(p_ref, k).tolist(), topk_indices(p_cand, k).tolist(), strict=True)
    ]
    diff = np.abs(ref - cand)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(norms > 0, (ref * cand).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)
    agree = int((ref_pred == cand_pred).sum())
    low, high = wilson_interval(agree, n, confidence)
    flipped, matrix = _flips(ref_pred, cand_pred, p_ref, p_cand, classes, labels, sources)
    acc = ref_acc = delta = None
    if labels is not None and (np.asarray(labels) >= 0).any():
        known = np.asarray(labels) >= 0
        acc = float((cand_pred[known] == labels[known]).mean())
        ref_acc = float((ref_pred[known] == labels[known]).mean())
        delta = (acc - ref_acc) * 100.0
    return Comparison(
        n=int(n),
        agreement=agree / n if n else 1.0,
        agreement_low=low,
        agreement_high=high,
        confidence=confidence,
        top5_overlap=float(np.mean(overlap)) if n else 1.0,
        max_abs_logit_diff=float(diff.max()) if n else 0.0,
        mean_abs_logit_diff=float(diff.mean()) if n else 0.0,
        cosine=float(cos.mean()) if n else 1.0,
        accuracy=acc,
        reference_accuracy=ref_acc,
        delta_accuracy_pts=delta,
        n_flipped=len(flipped),
        flip_matrix=matrix,
        flipped=flipped,
    )
