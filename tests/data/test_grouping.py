"""Grouping rules: verified transforms join, look-alike chains stay apart, file-name tracks join."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgeft.core.errors import EdgeftError
from edgeft.data.dedup import CANDIDATE_BITS, _popcount64, describe, is_transform, transform_groups
from edgeft.data.grouping import group_report
from edgeft.data.layouts import load_dataset
from edgeft.data.tracks import detect_track_keys


def _scene(seed: int, size=(160, 120)) -> Image.Image:
    """A textured photo-like scene: smooth gradient, noise, and shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    base = (60 + 0.4 * xx + 0.3 * yy)[..., None] + rng.normal(0, 18, (size[1], size[0], 3))
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(8):
        x, y = int(rng.integers(0, size[0] - 30)), int(rng.integers(0, size[1] - 30))
        w, h = int(rng.integers(10, 40)), int(rng.integers(10, 40))
        d.ellipse([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


def _look_alike(k: int) -> Image.Image:
    """Step k of a chain of different photos with one layout: a big dark fish drifting right by 2 px a step
    on a fresh noisy background with fresh specks. Neighbours are near in perceptual hash."""
    rng = np.random.default_rng(1000 + k)
    xx = np.mgrid[0:120, 0:160][1]
    base = (90 + 0.5 * xx)[..., None] + rng.normal(0, 35, (120, 160, 3))
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse([30 + 2 * k, 40, 110 + 2 * k, 80], fill=(30, 30, 40))
    for _ in range(4):
        x, y = int(rng.integers(0, 150)), int(rng.integers(0, 110))
        d.rectangle([x, y, x + 2, y + 2], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


def _distance(a, b) -> int:
    d1 = int(_popcount64(np.bitwise_xor(b.phash, a.phash[0])).min())
    return min(d1, int(_popcount64(np.bitwise_xor(b.disc, a.disc[0])).min()))


def test_chain_of_look_alikes_stays_apart():
    descs = [describe(_look_alike(k)) for k in range(5)]
    near = [_distance(descs[k], descs[k + 1]) for k in range(4)]
    assert max(near) <= CANDIDATE_BITS  # every neighbour is proposed as a candidate ...
    assert not any(is_transform(descs[k], descs[k + 1]) for k in range(4))  # ... and refused on verification
    assert len(set(transform_groups(descs))) == 5


def test_transformed_copies_join_and_other_scenes_do_not():
    base = _scene(7)
    copies = {
        "hflip": base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "vflip": base.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        "rot90": base.transpose(Image.Transpose.ROTATE_90),
        "rot27": base.rotate(27, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0)),
        "flip_rot41": base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(-41, fillcolor=(0, 0, 0)),
        "half": base.resize((80, 60), Image.Resampling.BILINEAR),
        "crop": base.crop((16, 12, 150, 112)),
    }
    others = [_scene(100 + i) for i in range(4)]
    descs = [describe(base)] + [describe(im) for im in copies.values()] + [describe(im) for im in others]
    groups = transform_groups(descs)
    assert groups[: 1 + len(copies)] == [0] * (1 + len(copies)), dict(zip(["base", *copies], groups, strict=False))
    assert len(set(groups[1 + len(copies) :])) == 4 and 0 not in groups[1 + len(copies) :]


def test_track_keys_from_file_names():
    egu = {
        c: [f"{c}/20151017_0535{t}_0A75_ACC_fish{t}_frame{k}.png" for t in (1, 2, 3) for k in range(4)]
        for c in ("bream", "chub")
    }
    tk = detect_track_keys(egu)
    assert tk.rule == "fish-frame"
    assert len({tk.keys[p] for p in egu["bream"]}) == 3
    seq = {c: [f"{c}/frame_{i:06d}.png" for i in [*range(100, 110), *range(500, 505)]] for c in ("a", "b")}
    tk = detect_track_keys(seq)
    assert tk.rule == "frame-number"
    assert Counter(tk.keys[p] for p in seq["a"]) == Counter({"frames@100": 10, "frames@500": 5})
    video = {c: [f"{c}/VID_{c}{t}_{i:04d}.jpg" for t in (1, 2) for i in range(5)] for c in ("a", "b")}
    assert detect_track_keys(video).rule == "track-frame"
    stamps = {c: [f"{c}/IMG_20230501_1230{s:02d}.jpg" for s in (0, 1, 2, 40, 41)] for c in ("a", "b")}
    tk = detect_track_keys(stamps)
    assert tk.rule == "timestamp" and len({tk.keys[p] for p in stamps["a"]}) == 2
    # photos of two days: the time of day is not a frame number, so a day is not one track
    days = {c: [f"{c}/IMG_2023050{d}_1230{s:02d}.jpg" for d in (1, 2) for s in (0, 1, 40)] for c in ("a", "b")}
    tk = detect_track_keys(days)
    assert tk.rule == "timestamp" and len({tk.keys[p] for p in days["a"]}) == 4
    # a plain counter or random names carry no track: no rule, no keys
    assert detect_track_keys({c: [f"{c}/img_{i:04d}.png" for i in range(9)] for c in "ab"}).rule is None
    assert detect_track_keys({c: [f"{c}/train_{c}{i}X7Q.jpg" for i in range(9)] for c in "ab"}).rule is None


def test_frame_sequence_joins_and_grouping_can_be_turned_off(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for fish in range(3):
            for k in range(3):
                _scene(hash((c, fish, k)) % 10_000, size=(64, 48)).save(tmp_path / c / f"x_fish{fish}_frame{k}.png")
    ds = load_dataset(tmp_path)
    assert ds.group_source.startswith("tracks:fish-frame")
    assert len({r.group for r in ds.records if r.label == "a"}) == 3
    assert ds.group_report["classes"]["a"]["largest_group"] == 3
    assert ds.group_report["warnings"] == []  # a third of the class, but one fish by its name: expected
    off = load_dataset(tmp_path, grouping="none")
    assert len({r.group for r in off.records}) == 18
    with pytest.raises(EdgeftError, match="unknown grouping"):
        load_dataset(tmp_path, grouping="maybe")


def test_identical_images_across_classes_are_reported_and_kept_out(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            _scene(10 * ord(c) + i, size=(64, 48)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "b" / "copy.png").write_bytes((tmp_path / "a" / "1.png").read_bytes())
    ds = load_dataset(tmp_path)
    assert ds.conflicts == [
        {"sha256": ds.conflicts[0]["sha256"], "classes": ["a", "b"], "paths": ["a/1.png", "b/copy.png"]}
    ]
    assert {r.path for r in ds.records} == {"a/0.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png"}


def test_class_with_only_bad_files_names_them(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _scene(1, size=(64, 48)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    with pytest.raises(EdgeftError, match=r"\['b'\] have no valid images: b/empty.png \(empty.*b/notes.txt"):
        load_dataset(tmp_path)


def test_large_groups_not_explained_by_a_track_are_reported():
    labels = {f"a/{i}.png": "a" for i in range(40)}
    groups = {p: ("a/0.png" if i < 6 else p) for i, p in enumerate(labels)}  # 6 of 40 in one group: 15%
    report = group_report(groups, labels, "verified-transforms", "")
    assert report["classes"]["a"]["largest_group"] == 6 and report["classes"]["a"]["groups"] == 35
    assert report["classes"]["a"]["sizes"]["1"] == 34 and report["classes"]["a"]["sizes"]["6-10"] == 1
    assert len(report["warnings"]) == 1 and "6 of 40 images (15%" in report["warnings"][0]
    assert group_report(groups, labels, "tracks", "", expected={"a/0.png"})["warnings"] == []
