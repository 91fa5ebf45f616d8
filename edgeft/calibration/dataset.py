"""The calibration set: a seeded, class-stratified sample of the run's `calib` split, and its cache key.

Only `calib` items are eligible (never test, never "the first N files"); any calib image whose content also
appears in the test split is dropped so calibration can never see a test image. Images go through
`edgeft.runtime.preprocess`, the one preprocessing implementation shared with training and serving.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.manifest import PreprocessSpec, sha256_bytes, stable_hash, write_json_atomic
from edgeft.runtime.preprocess import load_image, preprocess

CALIBRATION_FORMAT = "edgeft.calibration/1"
METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class ImageItem:
    path: str  # relative to the dataset root, as in splits.json
    label: str
    sha256: str


@dataclass
class CalibrationSet:
    """The chosen images (in a fixed order) plus what calibration.json reports about the choice."""

    root: Path
    items: list[ImageItem]
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


def select_calibration(splits: dict, classes: list[str], size: int, seed: int | None = None) -> CalibrationSet:
    """A deterministic class-stratified sample of `size` calib images (all of them when fewer exist)."""
    if size < 1:
        raise EdgeftError(f"--calib-size must be >= 1 (got {size})", fix="pass a positive --calib-size, e.g. 300")
    seed = int(splits.get("seed", 0) if seed is None else seed)
    root = Path(splits["root"])
    test_shas = {it.get("sha256") for it in splits["items"] if it["split"] == "test" and it.get("sha256")}
    excluded = sorted(it["path"] for it in splits["items"] if it["split"] == "calib" and it.get("sha256") in test_shas)
    pool: dict[str, list[ImageItem]] = {c: [] for c in classes}
    for it in splits["items"]:
        if it["split"] == "calib" and it["path"] not in excluded:
            if it["label"] not in pool:
                raise EdgeftError(
                    f"calib image {it['path']} has label {it['label']!r}, which is not a class of the model",
                    path=root / it["path"],
                    fix="re-run `edgeft train` so splits.json and model.json agree",
                )
            pool[it["label"]].append(ImageItem(it["path"], it["label"], str(it.get("sha256", ""))))
    available = sum(len(v) for v in pool.values())
    if available == 0:
        raise EdgeftError(
            "the run's calib split is empty: there is nothing to calibrate INT8 with",
            fix="re-run `edgeft train` with a calib fraction > 0 (or export without --int8)",
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
    chosen: list[ImageItem] = []
    for c in classes:
        ordered = sorted(pool[c], key=lambda it: it.path)
        pick = _class_rng(seed, c).permutation(len(ordered))[: quota[c]]
        chosen.extend(ordered[i] for i in sorted(int(i) for i in pick))
    return CalibrationSet(root, chosen, size, available, seed, notes, excluded)


def load_tensors(
    root: Path, items: list[ImageItem], spec: PreprocessSpec, what: str = "calib"
) -> tuple[np.ndarray, list[str]]:
    """Preprocess images with the shared implementation; also returns each file's actual content sha256.

    An image whose bytes no longer match the sha256 in splits.json means the dataset changed after training.
    """
    arrays, shas = [], []
    for it in items:
        f = root / it.path
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise EdgeftError(
                f"cannot read {what} image ({exc.strerror})", path=f, fix="restore the dataset the run was trained on"
            ) from None
        digest = sha256_bytes(data)
        if it.sha256 and digest != it.sha256:
            raise EdgeftError(
                f"{what} image changed since training (sha256 differs from splits.json)",
                path=f,
                fix="restore the original dataset, or re-run `edgeft train` on the current one",
            )
        arrays.append(preprocess(load_image(data, name=str(f)), spec))
        shas.append(digest)
    s = spec.input_size
    return (np.stack(arrays) if arrays else np.zeros((0, 3, s, s), np.float32)), shas


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


def write_calibration_json(
    path: Path, cset: CalibrationSet, classes: list[str], method: str, key: str, shas: list[str]
) -> dict:
    """calibration.json: which images calibrated INT8, per class, how, and under which cache key."""
    doc = {
        "format": CALIBRATION_FORMAT,
        "method": method,
        "split": "calib",
        "seed": cset.seed,
        "requested": cset.requested,
        "available": cset.available,
        "count": len(cset.items),
        "per_class": cset.per_class(classes),
        "cache_key": key,
        "notes": cset.notes,
        "excluded_duplicates_of_test": cset.excluded,
        "root": str(cset.root),
        "images": [
            {"path": it.path, "label": it.label, "sha256": sha} for it, sha in zip(cset.items, shas, strict=True)
        ],
    }
    write_json_atomic(path, doc)
    return doc
