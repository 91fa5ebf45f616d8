"""Content hashes: every cache key and every integrity check is built from these."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object with sorted keys: the building block of every cache key."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def classes_sha256(classes: Sequence[str]) -> str:
    """Identity of an ORDERED class list: reordering or renaming a class changes it."""
    return stable_hash({"classes": list(classes)})
