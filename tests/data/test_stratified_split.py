"""Stratified group split: fair shares per class and split, groups kept whole, impossible cases refused."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from edgeft.core.errors import EdgeftError
from edgeft.data.layouts import Dataset, Record
from edgeft.data.splits import SplitFractions, assign_splits, split_report


def _dataset(sizes: dict[str, list[int]]) -> Dataset:
    """Records only (no files): class -> list of group sizes."""
    recs = []
    for label, groups in sizes.items():
        for g, n in enumerate(groups):
            recs += [
                Record(f"{label}/g{g:03d}_{i:02d}.png", label, f"{label}{g}-{i}", group=f"{label}/g{g}")
                for i in range(n)
            ]
    return Dataset(Path("/data"), "folder", sorted(sizes), recs)


def _shares(ds: Dataset, assign: dict[str, str]) -> dict[str, dict[str, float]]:
    count = defaultdict(lambda: defaultdict(int))
    for r in ds.records:
        count[r.label][assign[r.path]] += 1
    return {c: {s: n / sum(v.values()) for s, n in v.items()} for c, v in count.items()}


def test_every_class_gets_its_fair_share_and_groups_stay_whole():
    rng = np.random.default_rng(0)
    ds = _dataset(
        {
            "many_small": rng.integers(1, 4, 120).tolist(),
            "uneven": [40, 30, 25] + rng.integers(1, 12, 60).tolist(),
            "few": [3] * 12,
        }
    )
    fr = SplitFractions()
    assign = assign_splits(ds, seed=1, fractions=fr)
    fair = {"train": 0.55, "val": fr.val, "calib": fr.calib, "test": fr.test}
    for label, shares in _shares(ds, assign).items():
        for split, want in fair.items():
            assert 0.5 * want <= shares.get(split, 0.0) <= 1.5 * want, (label, split, shares)
    by_group = defaultdict(set)
    for r in ds.records:
        by_group[r.group].add(assign[r.path])
    assert all(len(s) == 1 for s in by_group.values())
    assert assign == assign_splits(ds, seed=1, fractions=fr)
    report = split_report(ds, assign, fr)
    assert report["warnings"] == []
    row = report["classes"]["few"]["train"]
    assert row["images"] == sum(assign[r.path] == "train" for r in ds.records if r.label == "few")


def test_a_giant_group_lands_in_train_not_in_a_small_split():
    """One group of 70% of the class (a chained near-duplicate group once did this) must not fill val."""
    ds = _dataset({"shrimp": [683] + [2] * 141, "trout": [2] * 500})
    assign = assign_splits(ds, seed=0)
    giant = {assign[r.path] for r in ds.records if r.group == "shrimp/g0"}
    assert giant == {"train"}
    shares = _shares(ds, assign)["shrimp"]
    assert shares["val"] > 0 and shares["calib"] > 0 and shares["test"] > 0


def test_class_with_too_few_groups_is_refused_by_name():
    ds = _dataset({"bream": [10] * 20, "burbot": [20, 25, 20]})
    with pytest.raises(
        EdgeftError, match=r"class 'burbot' cannot be split: its 65 image\(s\) form 3 group\(s\)"
    ) as info:
        assign_splits(ds, seed=0)
    assert "--grouping none" in str(info.value)
    ok = assign_splits(ds, seed=0, fractions=SplitFractions(val=0.2, calib=0.0, test=0.3))  # 3 splits: feasible
    assert {assign for path, assign in ok.items() if path.startswith("burbot")} == {"train", "val", "test"}


def test_uneven_groups_are_reported_against_the_fair_share():
    ds = _dataset({"perch": [30, 30, 10, 5, 2], "chub": [1] * 80})
    assign = assign_splits(ds, seed=0)
    report = split_report(ds, assign)
    assert report["classes"]["chub"]["test"]["of_fair_share"] == pytest.approx(1.0, abs=0.1)
    assert any("class 'perch'" in w for w in report["warnings"])
    assert not any("class 'chub'" in w for w in report["warnings"])
