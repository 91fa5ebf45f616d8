"""Calibration-set selection and cache keys, on synthetic splits.json documents (no images, no model)."""

from __future__ import annotations

import pytest

from edgeft.calibration.dataset import calibration_key, select_calibration
from edgeft.errors import EdgeftError
from edgeft.manifest import PreprocessSpec

CLASSES = ["a", "b", "c"]


def _splits(calib_per_class: dict[str, int], test_per_class: int = 3, seed: int = 7) -> dict:
    items = []
    for c in CLASSES:
        for i in range(calib_per_class.get(c, 0)):
            items.append({"path": f"{c}/calib_{i:03d}.png", "label": c, "split": "calib", "sha256": f"{c}-cal-{i}"})
        for i in range(test_per_class):
            items.append({"path": f"{c}/test_{i:03d}.png", "label": c, "split": "test", "sha256": f"{c}-test-{i}"})
        items.append({"path": f"{c}/train_0.png", "label": c, "split": "train", "sha256": f"{c}-train"})
    return {"seed": seed, "root": "/data", "classes": CLASSES, "items": items}


def test_stratified_every_class_present_and_proportional():
    cset = select_calibration(_splits({"a": 100, "b": 50, "c": 10}), CLASSES, 32)
    counts = cset.per_class(CLASSES)
    assert sum(counts.values()) == 32
    assert all(n >= 1 for n in counts.values())
    assert counts["a"] > counts["b"] > counts["c"]
    assert not cset.notes


def test_selection_is_deterministic_seeded_and_not_the_first_files():
    doc = _splits({"a": 100, "b": 100, "c": 100})
    first = select_calibration(doc, CLASSES, 30)
    again = select_calibration(doc, CLASSES, 30)
    other_seed = select_calibration({**doc, "seed": 8}, CLASSES, 30)
    assert [it.path for it in first.items] == [it.path for it in again.items]
    assert [it.path for it in first.items] != [it.path for it in other_seed.items]
    first_ten_a = {f"a/calib_{i:03d}.png" for i in range(10)}
    assert {it.path for it in first.items if it.label == "a"} != first_ten_a


def test_only_calib_split_and_never_test_content():
    doc = _splits({"a": 5, "b": 5, "c": 5})
    doc["items"].append({"path": "a/calib_dup.png", "label": "a", "split": "calib", "sha256": "a-test-0"})
    cset = select_calibration(doc, CLASSES, 300)
    test_paths = {it["path"] for it in doc["items"] if it["split"] == "test"}
    test_shas = {it["sha256"] for it in doc["items"] if it["split"] == "test"}
    assert all(it.path.split("/")[1].startswith("calib_") for it in cset.items)
    assert not {it.path for it in cset.items} & test_paths
    assert not {it.sha256 for it in cset.items} & test_shas
    assert cset.excluded == ["a/calib_dup.png"]


def test_fewer_than_requested_uses_all_and_says_so():
    cset = select_calibration(_splits({"a": 4, "b": 3, "c": 2}), CLASSES, 300)
    assert len(cset.items) == 9
    assert any("only 9 calib images exist" in n for n in cset.notes)


def test_size_below_class_count_still_covers_every_class():
    cset = select_calibration(_splits({"a": 10, "b": 10, "c": 10}), CLASSES, 2)
    assert set(cset.per_class(CLASSES).values()) == {1}
    assert any("below the number of classes" in n for n in cset.notes)


def test_empty_calib_split_is_a_clear_error():
    with pytest.raises(EdgeftError, match="calib split is empty"):
        select_calibration(_splits({}), CLASSES, 300)


def test_cache_key_changes_with_weights_images_method_and_preprocessing():
    spec = PreprocessSpec()
    images = [("a/1.png", "sha-1"), ("b/2.png", "sha-2")]
    base = calibration_key("w1", spec, images, "minmax")
    assert base == calibration_key("w1", spec, list(images), "minmax")
    assert base != calibration_key("w2", spec, images, "minmax")
    assert base != calibration_key("w1", spec, [("a/1.png", "sha-1b"), ("b/2.png", "sha-2")], "minmax")
    assert base != calibration_key("w1", spec, images[:1], "minmax")
    assert base != calibration_key("w1", spec, images, "entropy")
    assert base != calibration_key("w1", PreprocessSpec(interpolation="bilinear"), images, "minmax")
