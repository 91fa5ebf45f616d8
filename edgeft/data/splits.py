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
        negative = [
            f"--{k}-frac {v}" for k, v in (("val", self.val), ("calib", self.calib), ("test", self.test)) if v < 0
        ]
        if negative:
            raise EdgeftError(f"split fractions cannot be negative: {', '.join(negative)}", fix="pass 0 or more")
        if self.val + self.calib + self.test >= 0.95:
            raise EdgeftError(
                f"split fractions val={self.val} calib={self.calib} test={self.test} leave too little for train",
                fix="keep val + calib + test below 0.95",
            )


FAIR_LOW, FAIR_HIGH = 0.5, 1.5  # a split's share of a class outside these multiples of its fair share is reported


def _class_rng(seed: int, label: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _allocate(groups: list[list[Record]], wanted: dict[str, float], rng: np.random.Generator) -> dict[str, str]:
    """Whole groups to splits, largest first, each to the split furthest below its image quota.

    `wanted` holds the fractions of the held-out splits; train takes the rest. Like scikit-learn's
    StratifiedGroupKFold, applied per class: ties between equal-sized groups are broken by the seed.
    Every split with a quota gets at least one group (the caller checks there are enough groups).
    """
    total = sum(len(g) for g in groups)
    targets = {s: f * total for s, f in wanted.items() if f > 0}
    targets["train"] = total - sum(targets.values())
    order = sorted(rng.permutation(len(groups)).tolist(), key=lambda i: -len(groups[i]))
    got = dict.fromkeys(targets, 0)
    members: dict[str, list[int]] = {s: [] for s in targets}
    for i in order:
        split = max(targets, key=lambda s: (targets[s] - got[s], s == "train"))
        got[split] += len(groups[i])
        members[split].append(i)
    for split in targets:  # an empty split takes the smallest group of the split with the most groups
        if not members[split]:
            donor = max(members, key=lambda s: len(members[s]))
            i = min(members[donor], key=lambda k: len(groups[k]))
            members[donor].remove(i)
            members[split].append(i)
    return {r.path: split for split, idx in members.items() for i in idx for r in groups[i]}


def _wanted(recs: list[Record], pool: list[Record], fr: SplitFractions) -> dict[str, float]:
    """Held-out fractions of the pool, so that each split is its fraction of the whole class."""
    given = {r.given_split for r in recs}
    scale = len(recs) / max(1, len(pool))
    wanted: dict[str, float] = {}
    if "test" not in given:
        wanted["test"] = fr.test * scale
    wanted["calib"] = fr.calib * scale
    if "val" not in given:
        wanted["val"] = fr.val * scale
    return wanted


def assign_splits(ds: Dataset, seed: int = 0, fractions: SplitFractions | None = None) -> dict[str, str]:
    """Map record path -> split. Given splits (pre-split trees) are kept; val/calib are carved from train.

    Groups (ds.records[*].group) never straddle splits. A class with fewer groups than splits to fill
    is refused with the reason and the ways out.
    """
    fr = fractions or SplitFractions()
    result: dict[str, str] = {}
    for label in ds.classes:
        recs = sorted((r for r in ds.records if r.label == label), key=lambda r: r.path)
        pool = [r for r in recs if r.given_split in (None, "train")]
        result.update({r.path: r.given_split for r in recs if r.given_split in ("val", "test")})
        wanted = _wanted(recs, pool, fr)
        groups: dict[str, list[Record]] = {}
        for r in pool:
            groups.setdefault(r.group or r.path, []).append(r)
        needed = 1 + sum(f > 0 for f in wanted.values())
        if len(groups) < needed:
            raise EdgeftError(
                f"class {label!r} cannot be split: its {len(pool)} image(s) form {len(groups)} group(s) "
                f"(images of one specimen, track or transform family stay together), and train/"
                f"{'/'.join(s for s, f in wanted.items() if f > 0)} need at least {needed}",
                path=ds.root,
                fix="add images of more specimens of this class, drop it with --species, or, if the groups "
                "are wrong, pass --group-regex or --grouping none",
            )
        result.update(_allocate([groups[k] for k in sorted(groups)], wanted, _class_rng(seed, label)))
    return result


def split_report(ds: Dataset, assignment: dict[str, str], fractions: SplitFractions | None = None) -> dict:
    """Per class and split: images, groups, share of the class and its ratio to the fair share; warnings."""
    fr = fractions or SplitFractions()
    fair = {"val": fr.val, "calib": fr.calib, "test": fr.test}
    fair["train"] = 1.0 - sum(fair.values())
    per_class: dict[str, dict] = {}
    warnings: list[str] = []
    for label in ds.classes:
        recs = [r for r in ds.records if r.label == label]
        row = {}
        for split in SPLITS:
            mine = [r for r in recs if assignment[r.path] == split]
            share = len(mine) / len(recs)
            ratio = share / fair[split] if fair[split] > 0 else None
            row[split] = {
                "images": len(mine),
                "groups": len({r.group for r in mine}),
                "share": round(share, 4),
                "of_fair_share": None if ratio is None else round(ratio, 3),
            }
            if ratio is not None and not FAIR_LOW <= ratio <= FAIR_HIGH and not any(r.given_split for r in recs):
                warnings.append(
                    f"class {label!r}: {split} holds {len(mine)} images, {ratio:.2f}x its fair share "
                    f"({fair[split]:.0%} of {len(recs)}); its groups are too few or too uneven to split evenly"
                )
        per_class[label] = row
    return {"fractions": fair, "classes": per_class, "warnings": warnings}


def splits_doc(
    ds: Dataset, assignment: dict[str, str], seed: int, fractions: SplitFractions | None = None
) -> SplitsDoc:
    """The splits.json document of an assignment (write it with `.save(run_dir)`), with the grouping and
    split reports and the images kept out (identical bytes under two classes)."""
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
        report={
            "grouping": ds.group_report,
            "split": split_report(ds, assignment, fractions),
            "kept_out": ds.conflicts,
        },
    )
