"""Deterministic, stratified, group-aware train/val/calib/test splits and splits.json."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import SPLITS, SplitItem, SplitsDoc
from edgeft.data.layouts import Dataset, Record


@dataclass(frozen=True)
class SplitFractions:
    val: float = 0.15
    calib: float = 0.10
    test: float = 0.20

    def __post_init__(self) -> None:
        if min(self.val, self.calib, self.test) < 0 or self.val + self.calib + self.test >= 0.95:
            raise EdgeftError(
                f"split fractions val={self.val} calib={self.calib} test={self.test} leave too little for train",
                fix="keep val + calib + test below 0.95",
            )


def _class_rng(seed: int, label: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _allocate(groups: list[list[Record]], wanted: dict[str, float], rng: np.random.Generator) -> dict[str, str]:
    """Assign whole groups to splits in shuffled order until each split's image quota is met; rest is train."""
    order = [int(i) for i in rng.permutation(len(groups))]
    total = sum(len(g) for g in groups)
    out: dict[str, str] = {}
    k = 0
    for split, frac in wanted.items():
        quota, got = frac * total, 0
        # a non-empty quota gets at least one group, as long as one group is left for train
        while k < len(order) - 1 and (got < quota - 0.5 * len(groups[order[k]]) or (got == 0 and quota > 0)):
            out.update({r.path: split for r in groups[order[k]]})
            got += len(groups[order[k]])
            k += 1
    for idx in order[k:]:
        out.update({r.path: "train" for r in groups[idx]})
    return out


def assign_splits(ds: Dataset, seed: int = 0, fractions: SplitFractions | None = None) -> dict[str, str]:
    """Map record path -> split. Given splits (pre-split trees) are kept; val/calib are carved from train."""
    fr = fractions or SplitFractions()
    result: dict[str, str] = {}
    for label in ds.classes:
        recs = sorted((r for r in ds.records if r.label == label), key=lambda r: r.path)
        given = {r.given_split for r in recs}
        pool = [r for r in recs if r.given_split in (None, "train")]
        result.update({r.path: r.given_split for r in recs if r.given_split in ("val", "test")})
        scale = len(recs) / max(1, len(pool))  # quotas are fractions of the whole class, taken from the pool
        wanted: dict[str, float] = {}
        if "test" not in given:
            wanted["test"] = fr.test * scale
        wanted["calib"] = fr.calib * scale
        if "val" not in given:
            wanted["val"] = fr.val * scale
        groups: dict[str, list[Record]] = {}
        for r in pool:
            groups.setdefault(r.group or r.path, []).append(r)
        result.update(_allocate([groups[k] for k in sorted(groups)], wanted, _class_rng(seed, label)))
    return result


def splits_doc(ds: Dataset, assignment: dict[str, str], seed: int) -> SplitsDoc:
    """The splits.json document of an assignment (write it with `.save(run_dir)`)."""
    items = [
        SplitItem(path=r.path, label=r.label, split=assignment[r.path], sha256=r.sha256, group=r.group)
        for r in sorted(ds.records, key=lambda r: (r.label, r.path))
    ]
    counts = {s: dict.fromkeys(ds.classes, 0) for s in SPLITS}
    for it in items:
        counts[it.split][it.label] += 1
    return SplitsDoc(
        seed=seed,
        root=str(ds.root),
        layout=ds.layout,
        classes=list(ds.classes),
        group_source=ds.group_source,
        counts=counts,
        items=items,
    )
