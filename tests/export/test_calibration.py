"""Calibration: stratified, seeded selection from the calib split only, THE preprocessing, and the cache key."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import ModelManifest, SplitItem, SplitsDoc
from edgeft.core.preprocess import PreprocessSpec, preprocess_file
from edgeft.export.calibration import calibration_key, prepare, select_calibration

CLASSES = ["a", "b", "c"]


def _splits(calib_per_class: dict[str, int], test_per_class: int = 3, seed: int = 7) -> SplitsDoc:
    items = []
    for c in CLASSES:
        for i in range(calib_per_class.get(c, 0)):
            items.append(SplitItem(path=f"{c}/calib_{i:03d}.png", label=c, split="calib", sha256=f"{c}-cal-{i}"))
        for i in range(test_per_class):
            items.append(SplitItem(path=f"{c}/test_{i:03d}.png", label=c, split="test", sha256=f"{c}-test-{i}"))
        items.append(SplitItem(path=f"{c}/train_0.png", label=c, split="train", sha256=f"{c}-train"))
    return SplitsDoc(seed=seed, root="/data", classes=CLASSES, items=items)


def test_stratified_every_class_present_and_proportional():
    cset = select_calibration(_splits({"a": 100, "b": 50, "c": 10}), CLASSES, 32)
    counts = cset.per_class(CLASSES)
    assert sum(counts.values()) == 32
    assert min(counts.values()) >= 1
    assert counts["a"] > counts["b"] > counts["c"]
    assert cset.notes == []


def test_selection_is_deterministic_seeded_and_not_the_first_files():
    doc = _splits({"a": 100, "b": 100, "c": 100})
    first = select_calibration(doc, CLASSES, 30)
    again = select_calibration(doc, CLASSES, 30)
    other_seed = select_calibration(doc.model_copy(update={"seed": 8}), CLASSES, 30)
    assert [it.path for it in first.items] == [it.path for it in again.items]
    assert [it.path for it in first.items] != [it.path for it in other_seed.items]
    first_ten_a = {f"a/calib_{i:03d}.png" for i in range(10)}
    assert {it.path for it in first.items if it.label == "a"} != first_ten_a


def test_only_calib_split_and_never_test_content():
    doc = _splits({"a": 5, "b": 5, "c": 5})
    doc.items.append(SplitItem(path="a/calib_dup.png", label="a", split="calib", sha256="a-test-0"))
    cset = select_calibration(doc, CLASSES, 300)
    assert {it.split for it in cset.items} == {"calib"}
    assert not {it.sha256 for it in cset.items} & {it.sha256 for it in doc.of("test")}
    assert cset.excluded == ["a/calib_dup.png"]
    assert len(cset.items) == 15


def test_fewer_than_requested_uses_all_and_says_so():
    cset = select_calibration(_splits({"a": 4, "b": 3, "c": 2}), CLASSES, 300)
    assert len(cset.items) == 9
    assert any("only 9 calib images exist" in n for n in cset.notes)


def test_size_below_class_count_still_covers_every_class():
    cset = select_calibration(_splits({"a": 10, "b": 10, "c": 10}), CLASSES, 2)
    assert cset.per_class(CLASSES) == {"a": 1, "b": 1, "c": 1}
    assert any("below the number of classes" in n for n in cset.notes)


def test_empty_calib_split_is_a_clear_error():
    with pytest.raises(EdgeftError, match="calib split is empty"):
        select_calibration(_splits({}), CLASSES, 300)


def test_cache_key_changes_with_weights_images_method_and_preprocessing():
    spec = PreprocessSpec()
    images = [("a/1.png", "sha-1"), ("b/2.png", "sha-2")]
    base = calibration_key("w1", spec, images, "minmax")
    assert base == calibration_key("w1", spec, list(images), "minmax")
    variants = [
        calibration_key("w2", spec, images, "minmax"),
        calibration_key("w1", spec, [("a/1.png", "sha-1b"), ("b/2.png", "sha-2")], "minmax"),
        calibration_key("w1", spec, images[:1], "minmax"),
        calibration_key("w1", spec, images, "entropy"),
        calibration_key("w1", PreprocessSpec(interpolation="bilinear"), images, "minmax"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


@pytest.mark.slow
def test_prepare_reads_the_calib_images_with_the_shared_preprocessing(tiny_run):
    manifest, splits = ModelManifest.load(tiny_run), SplitsDoc.load(tiny_run)
    classes, spec = list(manifest.classes), manifest.preprocess
    cal = prepare(splits, classes, spec, manifest.weights.sha256, 300, "minmax")
    assert cal.doc.count == len(splits.of("calib")) == len(cal.tensors)
    by_path = {it.path: it for it in splits.items}
    assert all(by_path[im.path].split == "calib" and by_path[im.path].sha256 == im.sha256 for im in cal.doc.images)
    expected = np.stack([preprocess_file(splits.abspath(by_path[im.path]), spec) for im in cal.doc.images])
    np.testing.assert_array_equal(cal.tensors, expected)
    assert prepare(splits, classes, spec, manifest.weights.sha256, 300, "minmax").key == cal.key
    others = {
        prepare(splits, classes, spec, "0" * 64, 300, "minmax").key,
        prepare(splits, classes, spec, manifest.weights.sha256, 300, "entropy").key,
        prepare(splits, classes, spec, manifest.weights.sha256, 4, "minmax").key,
        prepare(
            splits,
            classes,
            spec.model_copy(update={"interpolation": "bicubic"}),
            manifest.weights.sha256,
            300,
            "minmax",
        ).key,
    }
    assert cal.key not in others and len(others) == 4


@pytest.mark.slow
def test_a_calib_image_changed_since_training_is_refused(tiny_run, tmp_path):
    manifest, splits = ModelManifest.load(tiny_run), SplitsDoc.load(tiny_run)
    root = tmp_path / "data"
    shutil.copytree(splits.root, root)
    victim = splits.of("calib")[0]
    (root / victim.path).write_bytes((root / victim.path).read_bytes() + b"\0")
    moved = splits.model_copy(update={"root": str(root)})
    with pytest.raises(EdgeftError, match="changed since training") as err:
        prepare(moved, list(manifest.classes), manifest.preprocess, manifest.weights.sha256, 300, "minmax")
    assert err.value.path == str(root / victim.path)
