"""Reference logits, computed once: export judges on the test split with the torch model, parity reuses them.

The key holds everything the logits depend on: the weights (sha256), the preprocessing numbers, every image's
content hash in order, the reference's name and the versions of edgeft and torch. Entries are .npy files
read with allow_pickle=False; a torn or unreadable entry is recomputed, never trusted.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from edgeft import __version__
from edgeft.core.files import cache_root, write_bytes_atomic
from edgeft.core.hashing import sha256_file, stable_hash
from edgeft.core.preprocess import PreprocessSpec

REFCACHE_VERSION = 1


def _torch_version() -> str:
    try:
        return version("torch")
    except PackageNotFoundError:
        return ""


def reference_key(weights_sha256: str, spec: PreprocessSpec, paths: Sequence[Path], reference: str) -> str:
    return stable_hash(
        {
            "v": REFCACHE_VERSION,
            "weights": weights_sha256,
            "preprocess": spec.to_dict(),
            "images": [sha256_file(p) for p in paths],
            "reference": reference,
            "edgeft": __version__,
            "torch": _torch_version(),
        }
    )


def _path(key: str) -> Path:
    return cache_root() / "reference" / f"{key}.npy"


def load_reference(key: str, n: int, classes: int) -> np.ndarray | None:
    """The cached logits, or None (absent, torn, or of another shape)."""
    path = _path(key)
    if not path.is_file():
        return None
    try:
        logits = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return logits if logits.shape == (n, classes) and logits.dtype == np.float32 else None


def save_reference(key: str, logits: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(logits, np.float32), allow_pickle=False)
    write_bytes_atomic(_path(key), buf.getvalue(), durable=False)
