"""Dataset layouts, image validation, near-duplicate groups and leakage-aware splits, on trees built here."""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import SplitsDoc
from edgeft.core.preprocess import load_image
from edgeft.data.layouts import detect_layout, load_dataset
from edgeft.data.splits import SplitFractions, assign_splits, splits_doc


def _img(seed: int, size=(96, 72)) -> Image.Image:
    """A distinct textured image: noise background plus a few coloured shapes."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray((rng.random((size[1], size[0], 3)) * 120).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(5):
        x, y = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        d.ellipse(
            [x, y, x + int(rng.integers(8, 30)), y + int(rng.integers(8, 30))],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    return im


def _tree(root: Path, classes: dict[str, int], seed0: int = 0) -> None:
    for ci, (c, n) in enumerate(classes.items()):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _img(seed0 + 1000 * ci + i).save(root / c / f"{i:04d}.png")


def test_fish_layout_with_gt_masks_and_na_folder(tmp_path):
    fd = tmp_path / "Fish_Dataset"
    for ci, sp in enumerate(["Red Mullet", "Sea Bass"]):
        _tree(fd / sp, {sp: 5}, seed0=100 * ci)
        (fd / sp / f"{sp} GT").mkdir()
        for i in range(5):
            Image.new("L", (96, 72), 255).save(fd / sp / f"{sp} GT" / f"{i:04d}.png")
    _tree(tmp_path / "NA_Fish_Dataset", {"Trout": 3})
    (fd / "README.txt").write_text("license")
    for root in (tmp_path, fd):  # the root may be Fish_Dataset or the folder above it
        ds = load_dataset(root)
        assert ds.layout == "fish"
        assert ds.classes == ["Red Mullet", "Sea Bass"]
        assert len(ds.records) == 10
        assert not any("GT" in r.path for r in ds.records)
        assert ds.records[0].path.startswith("Red Mullet/Red Mullet/")


def test_folder_layout_and_species_selection(tmp_path):
    _tree(tmp_path, {"a": 4, "b": 4, "c": 4})
    ds = load_dataset(tmp_path, species=["c", "a"])
    assert ds.layout == "folder"
    assert ds.classes == ["a", "c"]
    assert {r.label for r in ds.records} == {"a", "c"}
    with pytest.raises(EdgeftError, match=r"unknown species \['zander'\]; available: \['a', 'b', 'c'\]"):
        load_dataset(tmp_path, species=["zander"])


def test_presplit_layout_respects_given_splits(tmp_path):
    _tree(tmp_path / "train", {"a": 20, "b": 20})
    _tree(tmp_path / "valid", {"a": 4, "b": 4}, seed0=50)
    _tree(tmp_path / "test", {"a": 5, "b": 5}, seed0=80)
    ds = load_dataset(tmp_path)
    assert ds.layout == "presplit"
    assign = assign_splits(ds, seed=0)
    for r in ds.records:
        top = r.path.split("/")[0]
        if top == "valid":
            assert assign[r.path] == "val"
        elif top == "test":
            assert assign[r.path] == "test"
        else:
            assert assign[r.path] in ("train", "calib")  # calib is carved from train, val/test are given
    assert sum(v == "calib" for v in assign.values()) >= 2


def test_bad_files_are_skipped_with_reasons(tmp_path):
    _tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    _img(7).save(buf, "PNG")
    (tmp_path / "b" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "b" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    ds = load_dataset(tmp_path)
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == {"a/empty.png", "a/notes.txt", "b/truncated.png", "b/garbage.png"}
    assert reasons["a/empty.png"].startswith("empty")
    assert reasons["a/notes.txt"].startswith("not_an_image")
    assert reasons["b/truncated.png"].split(":")[0] in ("truncated", "corrupt")
    assert len(ds.records) == 6


def test_modes_and_exif_orientation(tmp_path):
    base = _img(3)
    cases = {
        "l.png": base.convert("L"),
        "rgba.png": base.convert("RGBA"),
        "p.png": base.convert("P"),
        "i16.png": Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257),
    }
    assert cases["i16.png"].mode.startswith("I;16")
    for name, im in cases.items():
        im.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == base.size, name
    i16 = np.asarray(load_image(tmp_path / "i16.png"))[..., 0]
    assert np.array_equal(i16, np.asarray(base.convert("L")))  # 16-bit scaled down, not clipped to white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    base.save(tmp_path / "exif.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "exif.jpg").size == (base.height, base.width)


def test_decompression_bomb_guard_stays_on(tmp_path):
    Image.new("1", (16000, 16000)).save(tmp_path / "bomb.png")
    from edgeft.core.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError) as info:
        load_image(tmp_path / "bomb.png")
    assert info.value.reason == "decompression_bomb"
    assert Image.MAX_IMAGE_PIXELS is not None


def test_missing_root_empty_class_and_no_classes(tmp_path):
    with pytest.raises(EdgeftError, match="does not exist") as info:
        load_dataset(tmp_path / "nope")
    assert "Fish_Dataset/<Species>/<Species>" in str(info.value)
    (tmp_path / "flat").mkdir()
    with pytest.raises(EdgeftError, match="no class folders"):
        load_dataset(tmp_path / "flat")
    _tree(tmp_path / "t", {"a": 3})
    (tmp_path / "t" / "b").mkdir()
    (tmp_path / "t" / "b" / "x.png").write_bytes(b"")
    with pytest.raises(EdgeftError, match=r"\['b'\] have no valid images"):
        load_dataset(tmp_path / "t")


def test_flips_and_rotations_share_a_group(tmp_path):
    base = _img(42, size=(120, 90))
    d = tmp_path / "a"
    d.mkdir()
    base.save(d / "base.png")
    base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / "flip.png")
    base.transpose(Image.Transpose.ROTATE_90).save(d / "rot90.png")
    base.rotate(33, expand=False, fillcolor=(0, 0, 0)).save(d / "rot33.png")
    for i in range(6):
        _img(500 + i, size=(120, 90)).save(d / f"other{i}.png")
    ds = load_dataset(tmp_path)
    group = {r.path.split("/")[-1]: r.group for r in ds.records}
    assert group["flip.png"] == group["base.png"] == group["rot90.png"] == group["rot33.png"]
    others = {group[f"other{i}.png"] for i in range(6)}
    assert len(others) == 6 and group["base.png"] not in others


def test_group_regex(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    for t in range(4):
        for f in range(3):
            _img(10 * t + f).save(d / f"track{t}_frame{f}.png")
    ds = load_dataset(tmp_path, group_regex=r"track(\d+)_")
    assert ds.group_source == "tracks:regex+verified-transforms"
    assert len({r.group for r in ds.records}) == 4
    with pytest.raises(EdgeftError, match="is not a valid regular expression"):
        load_dataset(tmp_path, group_regex="track(")


@pytest.fixture()
def grouped_tree(tmp_path) -> Path:
    """3 classes x 30 specimens, a third of them with a flipped copy."""
    for ci, c in enumerate("abc"):
        (tmp_path / c).mkdir()
        for i in range(30):
            im = _img(ci * 1000 + i)
            im.save(tmp_path / c / f"{i:03d}.png")
            if i % 3 == 0:
                im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / c / f"{i:03d}_flip.png")
    return tmp_path


def test_splits_deterministic_stratified_grouped_disjoint(grouped_tree, tmp_path):
    ds = load_dataset(grouped_tree)
    a1 = assign_splits(ds, seed=3)
    a2 = assign_splits(load_dataset(grouped_tree), seed=3)
    assert a1 == a2
    assert a1 != assign_splits(ds, seed=4)
    counts = defaultdict(lambda: defaultdict(int))
    for r in ds.records:
        counts[a1[r.path]][r.label] += 1
    for split in ("train", "val", "calib", "test"):
        assert set(counts[split]) == {"a", "b", "c"}, split  # every class in every split
    by_group = defaultdict(set)
    for r in ds.records:
        by_group[r.group].add(a1[r.path])
    assert all(len(s) == 1 for s in by_group.values())  # no group straddles splits
    flips = [r for r in ds.records if r.path.endswith("_flip.png")]
    assert flips and all(a1[r.path] == a1[r.path.replace("_flip", "")] for r in flips)
    splits_doc(ds, a1, 3).save(tmp_path)
    on_disk = SplitsDoc.load(tmp_path)
    assert on_disk.model_dump() == splits_doc(ds, a1, 3).model_dump()
    item = on_disk.items[0]
    assert hashlib.sha256(on_disk.abspath(item).read_bytes()).hexdigest() == item.sha256
    assert {it.split for it in on_disk.items} == {"train", "val", "calib", "test"}
    assert sum(sum(c.values()) for c in on_disk.counts.values()) == len(on_disk.items)


def test_split_fractions_validated():
    with pytest.raises(EdgeftError, match="leave too little for train"):
        SplitFractions(val=0.4, calib=0.3, test=0.3)
    with pytest.raises(EdgeftError, match="cannot be negative: --val-frac -0.1"):
        SplitFractions(val=-0.1)


def test_detect_layout_nested_kaggle_archive(tmp_path):
    inner = tmp_path / "Fish_Dataset" / "Fish_Dataset"
    _tree(inner / "Trout", {"Trout": 2})
    layout, root = detect_layout(tmp_path)
    assert layout == "fish" and root == inner


def test_cli_data_synth_and_inspect(tmp_path):
    from typer.testing import CliRunner

    from edgeft.cli.app import app

    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--per-class",
            "6",
            "--species",
            "Trout,Shrimp",
            "--width",
            "128",
            "--height",
            "96",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC" in r.output
    root = tmp_path / "s" / "Fish_Dataset"
    assert len(list((root / "Trout" / "Trout").glob("*.png"))) == 6
    r = runner.invoke(app, ["data", "inspect", str(root), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "rep" / "inspect.json").read_text())
    assert report["classes"]["Trout"]["images"] == 6 and report["balance"] == 1.0
    truth = json.loads((root / "synth.json").read_text())["groups"]
    found = {m: g for g, members in report["duplicate_group_members"].items() for m in members}
    pairs_true = {(a, b) for a in truth for b in truth if a < b and truth[a] == truth[b]}
    pairs_found = {(a, b) for a in found for b in found if a < b and found[a] == found[b]}
    assert pairs_found <= pairs_true  # no two different synthetic specimens merged
    assert len(pairs_found) >= 0.75 * len(pairs_true)  # most flip/rotation copies recovered
    for png in ("class_distribution.png", "samples.png", "largest_groups.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000


def test_evalset_spread_keeps_every_class_share_and_is_deterministic():
    from pathlib import Path

    from edgeft.data.evalsets import EvalSet

    paths = [Path(f"{c}/{i:03d}.png") for c, n in (("a", 300), ("b", 100), ("c", 200)) for i in range(n)]
    full = EvalSet(paths, [p.parent.name for p in paths], "test")
    part = full.spread(60)
    assert len(part) == 60 and part.paths == full.spread(60).paths
    assert [part.labels.count(c) for c in "abc"] == [30, 10, 20]
    assert full.spread(1000) is full
