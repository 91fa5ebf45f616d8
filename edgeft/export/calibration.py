"""INT8 calibration: a seeded, class-stratified sample of the run's `calib` split, its tensors and its cache key.

Only `calib` items are eligible (never test, never "the first N files"); any calib image whose content also
appears in the test split is dropped so calibration can never see a test image. Images go through
`edgeft.core.preprocess.preprocess_many`, the one preprocessing implementation shared with training and serving.
Every quantizer cache is keyed by the weights, the preprocessing, the image list (with content hashes), the
method and the versions of the tools that shape the graph.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.files import cache_root
from edgeft.core.hashing import sha256_bytes, stable_hash
from edgeft.core.manifests import CalibrationDoc, CalibrationImage, SplitItem, SplitsDoc
from edgeft.core.preprocess import PreprocessSpec, preprocess_many
from edgeft.core.progress import Reporter, or_silent
from edgeft.core.versions import package_version
from edgeft.export.quant.ort import MAX_CALIB_CHUNK, PERCENTILE

METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_VERSION = 1


@dataclass
class CalibrationSet:
    """The chosen calib items (in a fixed order) plus what calibration.json reports about the choice."""

    items: list[SplitItem]
    requested: int
    available: int
    seed: int
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def per_class(self, classes: list[str]) -> dict[str, int]:
        counts = dict.fromkeys(classes, 0)
        for it in self.items:
            counts[it.label] = counts.get(it.label, 0) + 1
        return counts


@dataclass
class Calibration:
    """A prepared calibration set: the tensors every quantizer uses and the key its caches live under."""

    doc: CalibrationDoc
    tensors: np.ndarray

    @property
    def key(self) -> str:
        return self.doc.cache_key

    @property
    def method(self) -> str:
        return self.doc.method

    @property
    def ranges_cache(self) -> Path:
        return cache_root() / "calibration" / self.key / "ranges.json"


def _class_rng(seed: int, label: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"calib:{label}".encode())])


def _allocate(available: dict[str, int], size: int) -> dict[str, int]:
    """Per-class quotas summing to `size`: one each first, the rest proportional (largest remainder), capped."""
    quota = {c: min(1, n) for c, n in available.items()}
    left = size - sum(quota.values())
    while left > 0:
        room = {c: available[c] - quota[c] for c in available if available[c] > quota[c]}
        if not room:
            break
        total = sum(available[c] for c in room)
        share = {c: left * available[c] / total for c in room}
        extra = {c: min(room[c], int(share[c])) for c in room}
        if sum(extra.values()) == 0:
            for c in sorted(room, key=lambda c: (-(share[c] - int(share[c])), c))[:left]:
                extra[c] = 1
        for c, k in extra.items():
            quota[c] += k
        left -= sum(extra.values())
    return quota


def _pool(splits: SplitsDoc, classes: list[str]) -> tuple[dict[str, list[SplitItem]], list[str]]:
    """Calib items per class, and the calib paths left out because their content is also a test image."""
    test_shas = {it.sha256 for it in splits.of("test") if it.sha256}
    calib = splits.of("calib")
    excluded = [it.path for it in calib if it.sha256 and it.sha256 in test_shas]
    pool: dict[str, list[SplitItem]] = {c: [] for c in classes}
    for it in calib:
        if it.path in excluded:
            continue
        if it.label not in pool:
            raise EdgeftError(
                f"calib image {it.path} has label {it.label!r}, which is not a class of the model",
                path=splits.abspath(it),
                fix="re-run `edgeft train` so splits.json and model.json agree",
            )
        pool[it.label].append(it)
    return pool, excluded


def select_calibration(splits: SplitsDoc, classes: list[str], size: int, seed: int | None = None) -> CalibrationSet:
    """A deterministic class-stratified sample of `size` calib images (all of them when fewer exist)."""
    if size < 1:
        raise EdgeftError(f"--calib-size must be >= 1 (got {size})", fix="pass a positive --calib-size, e.g. 300")
    seed = int(splits.seed if seed is None else seed)
    pool, excluded = _pool(splits, classes)
    available = sum(len(v) for v in pool.values())
    if available == 0:
        raise EdgeftError(
            "the run's calib split is empty: there is nothing to calibrate INT8 with",
            fix="re-run `edgeft train` with a calib fraction > 0 (or export with --no-int8)",
        )
    notes = []
    if excluded:
        notes.append(f"{len(excluded)} calib image(s) are byte-identical to test images and were left out")
    missing = [c for c, v in pool.items() if not v]
    if missing:
        notes.append(f"no calib images for class(es) {missing}: INT8 ranges may not cover them")
    if available <= size:
        if available < size:
            notes.append(f"only {available} calib images exist (asked for {size}); using all of them")
        quota = {c: len(v) for c, v in pool.items()}
    else:
        quota = _allocate({c: len(v) for c, v in pool.items()}, size)
        if sum(quota.values()) > size:
            notes.append(f"--calib-size {size} is below the number of classes; taking one image per class")
    chosen: list[SplitItem] = []
    for c in classes:
        ordered = pool[c]  # SplitsDoc.of sorts by path: a fixed order to draw from
        pick = _class_rng(seed, c).permutation(len(ordered))[: quota[c]]
        chosen.extend(ordered[i] for i in sorted(int(i) for i in pick))
    return CalibrationSet(chosen, size, available, seed, notes, excluded)


def read_images(
    splits: SplitsDoc, items: list[SplitItem], spec: PreprocessSpec, reporter: Reporter | None = None
) -> tuple[np.ndarray, list[str]]:
    """Preprocessed tensors and each file's actual content sha256; a changed or unreadable image is an error.

    An image whose bytes no longer match the sha256 in splits.json means the dataset changed after training.
    """
    rep = or_silent(reporter)
    blobs, shas = [], []
    for it in items:
        f = splits.abspath(it)
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise EdgeftError(
                f"cannot read calib image ({exc.strerror})", path=f, fix="restore the dataset the run was trained on"
            ) from None
        digest = sha256_bytes(data)
        if it.sha256 and digest != it.sha256:
            raise EdgeftError(
                "calib image changed since training (sha256 differs from splits.json)",
                path=f,
                fix="restore the original dataset, or re-run `edgeft train` on the current one",
            )
        blobs.append(data)
        shas.append(digest)
    x, _, failed = preprocess_many(blobs, spec, advance=rep.advance)
    if failed:
        index, exc = failed[0]
        raise EdgeftError(
            f"calib image cannot be decoded ({exc.message})",
            path=splits.abspath(items[index]),
            fix="restore the dataset the run was trained on",
        )
    return x, shas


def calibration_key(
    weights_sha256: str, spec: PreprocessSpec, images: list[tuple[str, str]], method: str, extra: dict | None = None
) -> str:
    """stable_hash over everything the calibrated ranges depend on: a retrained model or new images get a new key."""
    return stable_hash(
        {
            "weights_sha256": weights_sha256,
            "preprocess": spec.to_dict(),
            "images": [list(pair) for pair in images],
            "method": method,
            "extra": extra or {},
        }
    )


def tool_versions() -> dict:
    """What shapes the graph the ranges are keyed to (tensor names come from the exporter) and how they are found."""
    out: dict = {"calibration": CALIBRATION_VERSION, "percentile": PERCENTILE, "chunk": MAX_CALIB_CHUNK}
    for pkg in ("torch", "onnx", "onnxruntime"):
        out[pkg] = package_version(pkg) or None
    return out


def prepare(
    splits: SplitsDoc,
    classes: list[str],
    spec: PreprocessSpec,
    weights_sha256: str,
    size: int,
    method: str,
    reporter: Reporter | None = None,
) -> Calibration:
    """Select, read, preprocess and key the calibration images; `doc` is what calibration.json holds."""
    if method not in METHODS:
        raise EdgeftError(f"unknown calibration method {method!r}", fix=f"use --calib-method one of {list(METHODS)}")
    cset = select_calibration(splits, classes, size)
    or_silent(reporter).task("INT8: calibration images", len(cset.items))
    tensors, shas = read_images(splits, cset.items, spec, reporter)
    images = [(it.path, sha) for it, sha in zip(cset.items, shas, strict=True)]
    key = calibration_key(weights_sha256, spec, images, method, tool_versions())
    doc = CalibrationDoc(
        method=method,
        seed=cset.seed,
        requested=cset.requested,
        available=cset.available,
        count=len(cset.items),
        per_class=cset.per_class(classes),
        cache_key=key,
        notes=cset.notes,
        excluded_duplicates_of_test=cset.excluded,
        root=splits.root,
        images=[
            CalibrationImage(path=p, label=it.label, sha256=s) for (p, s), it in zip(images, cset.items, strict=True)
        ],
    )
    return Calibration(doc, tensors)
