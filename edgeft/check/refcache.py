"""Logits computed once: export judges every artifact on the test split, parity reuses what export computed.

Two kinds of entries, one store:
- the reference: the torch model's logits, keyed by the weights (sha256), the preprocessing numbers, every
  image's content hash in order, the reference's name and the versions of edgeft and torch;
- an artifact's outputs on an engine (`artifact_key` + `run_cached`): keyed by the artifact's files (sha256 of
  the model file and of its side files, e.g. the OpenVINO .bin), the engine (name and class), its device and
  every setting that changes its numerics (`Engine.numerics()`), the engine package's version, the batch size,
  the preprocessing numbers, every image's content hash in order, this CPU, edgeft's version and the cache
  format.

Entries are .npy files read with allow_pickle=False and written atomically; a torn, unreadable or wrong-shape
entry is recomputed, never trusted. Image hashes are computed once, from the bytes `EvalSet.load` decoded
(`EvalSet.shas`), and passed to every key.
"""

from __future__ import annotations

import functools
import io
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft import __version__
from edgeft.core.files import cache_root, write_bytes_atomic
from edgeft.core.hashing import stable_hash
from edgeft.core.preprocess import PreprocessSpec
from edgeft.core.versions import package_version
from edgeft.engines.base import Engine

REFCACHE_VERSION = 1
ARTIFACT_CACHE_VERSION = 1


def _decoders() -> dict[str, str]:
    """The libraries that turn image files into model inputs (decoding, resampling): another version may give
    other pixels, so cached logits are keyed by them."""
    return {p: package_version(p) for p in ("pillow", "opencv-python", "opencv-python-headless", "numpy")}


def reference_key(weights_sha256: str, spec: PreprocessSpec, images: Sequence[str], reference: str) -> str:
    """images: the content hashes of the images (`EvalSet.shas`), in order."""
    return stable_hash(
        {
            "v": REFCACHE_VERSION,
            "weights": weights_sha256,
            "preprocess": spec.to_dict(),
            "images": list(images),
            "reference": reference,
            "edgeft": __version__,
            "torch": package_version("torch"),
            "decoders": _decoders(),
        }
    )


@functools.cache
def _cpu() -> str:
    """This CPU's model name: kernels (and their rounding) are picked by instruction set."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()} {model or platform.processor()} x{os.cpu_count() or 0}"


def artifact_key(
    engine: Engine,
    model_sha256: str,
    extra_sha256: Iterable[str],
    spec: PreprocessSpec,
    images: Sequence[str],
    batch_size: int,
) -> str:
    """The cache key of `engine`'s outputs (the engine as constructed, not necessarily loaded) on these images.

    model_sha256 / extra_sha256: sha256 of the model file and of its side files (bundle.json records them).
    images: their content hashes in order (`EvalSet.shas`), preprocessed with `spec`. "" when the model's hash is
    unknown: such an artifact is never cached.
    """
    if not model_sha256:
        return ""
    return stable_hash(
        {
            "v": ARTIFACT_CACHE_VERSION,
            "model": model_sha256,
            "extra": sorted(extra_sha256),
            "engine": [engine.name, f"{type(engine).__module__}.{type(engine).__qualname__}"],
            "device": engine.device,
            "numerics": engine.numerics(),
            "library": engine.library_version(),
            "output": [engine.output_name, engine.num_outputs],
            "batch": batch_size,
            "preprocess": spec.to_dict(),
            "images": list(images),
            "cpu": _cpu(),
            "edgeft": __version__,
            "decoders": _decoders(),
        }
    )


def _path(kind: str, key: str, suffix: str = ".npy") -> Path:
    return cache_root() / kind / f"{key}{suffix}"


def _load(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def _save(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue(), durable=False)


def _logits(path: Path, n: int, classes: int) -> np.ndarray | None:
    logits = _load(path)
    if logits is None or logits.shape != (n, classes) or logits.dtype != np.float32:
        return None
    return logits


def load_reference(key: str, n: int, classes: int) -> np.ndarray | None:
    """The cached logits, or None (absent, torn, or of another shape)."""
    return _logits(_path("reference", key), n, classes)


def save_reference(key: str, logits: np.ndarray) -> None:
    _save(_path("reference", key), np.asarray(logits, np.float32))


@dataclass
class Outputs:
    """An engine's logits on the judged images, what the engine said it ran as, and whether they came from the
    cache (the same artifact, engine, settings and images evaluated before)."""

    logits: np.ndarray
    describe: str
    cached: bool = False


def load_outputs(key: str, n: int, classes: int) -> Outputs | None:
    """The cached outputs, or None (absent, torn, unreadable or of another shape)."""
    logits = _logits(_path("outputs", key), n, classes)
    if logits is None:
        return None
    describe = _load(_path("outputs", key, ".describe.npy"))  # informational: absent or torn is not a miss
    text = str(describe) if describe is not None and describe.shape == () and describe.dtype.kind == "U" else ""
    return Outputs(logits, text, cached=True)


def save_outputs(key: str, outputs: Outputs) -> None:
    _save(_path("outputs", key, ".describe.npy"), np.array(outputs.describe))
    _save(_path("outputs", key), np.asarray(outputs.logits, np.float32))  # last: the entry exists once it lands


def run_cached(
    engine: Engine,
    x: np.ndarray,
    batch_size: int,
    key: str,
    advance: Callable[[int], None] | None = None,
    reuse: bool = True,
) -> Outputs:
    """The engine's outputs on x: from the cache when `key` is there (and reuse), else loaded, run and stored.

    key: `artifact_key` of this engine on these images, or "" (not cached). reuse=False runs the engine even on
    a hit and refreshes the entry. Errors of loading or running propagate (EdgeftError).
    """
    n, classes = x.shape[0], engine.num_outputs
    if key and reuse and classes is not None:
        hit = load_outputs(key, n, classes)
        if hit is not None:
            if advance:
                advance(n)
            return Outputs(hit.logits, hit.describe or engine.describe(), cached=True)
    with engine:
        describe = engine.describe()
        logits = engine.run(x, batch_size, advance)
    out = Outputs(logits, describe)
    if key:
        save_outputs(key, out)
    return out
