"""INT8 calibration: the calib-split sample, its cache key, and the quantizers that consume it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft.calibration.dataset import (
    METHODS,
    CalibrationSet,
    calibration_key,
    load_tensors,
    select_calibration,
    write_calibration_json,
)
from edgeft.errors import EdgeftError
from edgeft.manifest import PreprocessSpec

CALIBRATION_VERSION = 1

__all__ = [
    "METHODS",
    "Calibration",
    "CalibrationSet",
    "cache_root",
    "calibration_key",
    "load_tensors",
    "prepare",
    "select_calibration",
    "write_calibration_json",
]


def cache_root() -> Path:
    """~/.cache/edgeft (or $EDGEFT_CACHE): shared with the training feature cache."""
    return Path(os.environ.get("EDGEFT_CACHE", Path.home() / ".cache" / "edgeft"))


@dataclass
class Calibration:
    """A prepared calibration set: the tensors every quantizer uses and the key its caches live under."""

    set: CalibrationSet
    tensors: np.ndarray
    shas: list[str]
    method: str
    key: str
    doc: dict

    @property
    def ranges_cache(self) -> Path:
        return cache_root() / "calibration" / self.key / "ranges.json"


def _engine_versions() -> dict:
    """Versions that shape the graph the ranges are keyed to (tensor names come from the exporter)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"calibration": CALIBRATION_VERSION}
    for pkg in ("torch", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def prepare(
    splits: dict,
    classes: list[str],
    spec: PreprocessSpec,
    weights_sha256: str,
    size: int,
    method: str,
    out_json: Path,
) -> Calibration:
    """Select, preprocess and key the calibration images; writes calibration.json."""
    if method not in METHODS:
        raise EdgeftError(f"unknown calibration method {method!r}", fix=f"use --calib-method one of {list(METHODS)}")
    from edgeft.calibration.ort_quant import MAX_CALIB_CHUNK, PERCENTILE

    cset = select_calibration(splits, classes, size)
    tensors, shas = load_tensors(cset.root, cset.items, spec, what="calib")
    extra = {**_engine_versions(), "percentile": PERCENTILE, "chunk": MAX_CALIB_CHUNK}
    key = calibration_key(
        weights_sha256, spec, [(it.path, s) for it, s in zip(cset.items, shas, strict=True)], method, extra
    )
    doc = write_calibration_json(out_json, cset, classes, method, key, shas)
    return Calibration(cset, tensors, shas, method, key, doc)
