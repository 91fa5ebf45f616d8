"""Softmax and top-k, written once: predictions, the comparator and the monitor all use these."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature in float64 with max-subtraction (never overflows)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, ties broken by lower index (deterministic)."""
    return np.argsort(-np.asarray(probs), axis=-1, kind="stable")[..., :k]


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row: how close a prediction was to flipping."""
    p = np.sort(np.asarray(probs, np.float64), axis=-1)
    return p[..., -1] - (p[..., -2] if p.shape[-1] > 1 else 0.0)
