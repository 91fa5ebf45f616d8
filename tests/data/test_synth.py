"""The synthetic fish generator: deterministic, Kaggle layout, true ground-truth groups of flipped/rotated copies."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeft.core.errors import EdgeftError
from edgeft.data.synth import FISH_SPECIES, generate_dataset, render_specimen
from edgeft.data.synth.generate import _VIEW_KINDS, _plan_class

SIZE = (128, 96)
PER = 6
SEED = 3


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), per_class=PER, seed=SEED, image_size=SIZE)


def test_layout_is_the_kaggle_one(small: Path) -> None:
    assert small.name == "Fish_Dataset"
    assert sorted(p.name for p in small.iterdir() if p.is_dir()) == sorted(FISH_SPECIES)
    names = {f"{i:05d}.png" for i in range(1, PER + 1)}
    nonempty = 0
    for s in FISH_SPECIES:
        assert sorted(p.name for p in (small / s).iterdir()) == sorted([s, f"{s} GT"])
        assert {p.name for p in (small / s / s).iterdir()} == names
        assert {p.name for p in (small / s / f"{s} GT").iterdir()} == names
        for name in names:
            with Image.open(small / s / s / name) as im:
                assert (im.mode, im.size) == ("RGB", SIZE)
            with Image.open(small / s / f"{s} GT" / name) as gt:
                assert (gt.mode, gt.size) == ("L", SIZE)
                mask = np.asarray(gt)
            assert set(np.unique(mask).tolist()) <= {0, 255}
            nonempty += bool(mask.any())
    assert nonempty >= 0.9 * PER * len(FISH_SPECIES)


def test_same_arguments_give_byte_identical_files(small: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path, per_class=PER, seed=SEED, image_size=SIZE)
    assert _digests(again) == _digests(small)
    assert (again / "synth.json").read_text() == (small / "synth.json").read_text()
    other = generate_dataset(tmp_path / "other", per_class=PER, seed=SEED + 1, image_size=SIZE, species=["Trout"])
    assert _digests(other)["Trout/Trout/00001.png"] != _digests(small)["Trout/Trout/00001.png"]


def test_species_subset_gives_the_same_images(small: Path, tmp_path: Path) -> None:
    subset = ["Trout", "Shrimp"]
    root = generate_dataset(tmp_path, per_class=PER, seed=SEED, image_size=SIZE, species=subset, masks=False)
    got = _digests(root)
    want = {k: v for k, v in _digests(small).items() if k.split("/")[1] in subset}
    assert got == want
    doc = json.loads((root / "synth.json").read_text())
    assert doc["species"] == ["Shrimp", "Trout"]
    assert not (root / "Trout" / "Trout GT").exists()


def test_synth_json_groups_cover_every_image(small: Path) -> None:
    doc = json.loads((small / "synth.json").read_text())
    assert doc["generator"] == "edgeft.synth/1"
    assert (doc["seed"], doc["per_class"], doc["image_size"]) == (SEED, PER, list(SIZE))
    assert doc["species"] == list(FISH_SPECIES)
    images = {p.relative_to(small).as_posix() for s in FISH_SPECIES for p in (small / s / s).glob("*.png")}
    assert set(doc["groups"]) == images
    sizes: dict[str, int] = {}
    for path, group in doc["groups"].items():
        species = path.split("/")[0]
        assert re.fullmatch(re.escape(species) + r"#\d+", group)
        sizes[group] = sizes.get(group, 0) + 1
    assert max(sizes.values()) >= 2
    assert min(sizes.values()) == 1 or len(sizes) < len(images)


def test_views_of_a_specimen_are_real_flips_and_rotations(small: Path) -> None:
    doc = json.loads((small / "synth.json").read_text())
    checked: dict[str, int] = {}
    for cls, s in enumerate(FISH_SPECIES):
        for idx, views, numbers in _plan_class(SEED, cls, PER):
            files = [f"{n:05d}.png" for n in numbers]
            assert {doc["groups"][f"{s}/{s}/{f}"] for f in files} == {f"{s}#{idx}"}
            img = {f: _load(small / s / s / f) for f in files}
            gt = {f: _load(small / s / f"{s} GT" / f) for f in files}
            base = files[0]
            assert views[0][0] == "base"
            for (kind, angle), f in zip(views[1:], files[1:], strict=True):
                ops = {"hflip": np.fliplr, "vflip": np.flipud, "rot180": lambda a: np.rot90(a, 2)}
                if kind in ops:
                    assert np.array_equal(img[f], ops[kind](img[base]))
                    assert np.array_equal(gt[f], ops[kind](gt[base]))
                elif kind == "rot90":  # a quarter turn inside the same frame: centre kept, black side bands
                    w, h = SIZE
                    band = (w - h) // 2
                    turned = np.rot90(img[base], 1 if angle == 90.0 else 3)
                    assert np.array_equal(img[f][:, band : w - band], turned[band : w - band])
                    assert not img[f][:, :band].any() and not img[f][:, w - band :].any()
                else:  # rotations that keep the frame leave black corners, as in the real dataset
                    assert not img[f][0, 0].any() and not img[f][-1, -1].any()
                    assert not np.array_equal(img[f], img[base])
                    assert set(np.unique(gt[f]).tolist()) <= {0, 255}
                checked[kind] = checked.get(kind, 0) + 1
    assert checked.get("hflip", 0) + checked.get("vflip", 0) + checked.get("rot180", 0) >= 1
    assert sum(checked.values()) >= 5


def test_view_plan_matches_the_real_dataset_habits() -> None:
    plan = _plan_class(0, 0, 1000)
    counts = [len(views) for _, views, _ in plan]
    assert sum(counts) == 1000 and max(counts) <= 4
    assert 0.3 < counts.count(1) / len(counts) < 0.5
    numbers = [n for _, _, nums in plan for n in nums]
    assert sorted(numbers) == list(range(1, 1001)) and numbers != sorted(numbers)
    kinds = {kind for _, views, _ in plan for kind, _ in views}
    assert kinds == {"base", *_VIEW_KINDS}


def test_unknown_species_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(EdgeftError) as err:
        generate_dataset(tmp_path, per_class=2, species=["Trout", "Salmon"])
    text = str(err.value)
    assert "Salmon" in text and all(s in text for s in FISH_SPECIES)
    assert not (tmp_path / "Fish_Dataset").exists()
    with pytest.raises(EdgeftError, match="Hourse Mackerel"):
        render_specimen("Horse Mackerel", np.random.default_rng(0))


def test_progress_counts_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate_dataset(
        tmp_path, per_class=5, image_size=SIZE, species=["Sea Bass"], progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (5, 5) and all(t == 5 for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[0] == 0


def test_a_smaller_rerun_removes_stale_images(tmp_path: Path) -> None:
    generate_dataset(tmp_path, per_class=5, image_size=SIZE, species=["Shrimp"])
    root = generate_dataset(tmp_path, per_class=3, image_size=SIZE, species=["Shrimp"])
    assert sorted(p.name for p in (root / "Shrimp" / "Shrimp").iterdir()) == ["00001.png", "00002.png", "00003.png"]
    assert len(list((root / "Shrimp" / "Shrimp GT").iterdir())) == 3


@pytest.mark.parametrize("species", FISH_SPECIES)
def test_render_specimen_draws_one_fish(species: str) -> None:
    img, mask = render_specimen(species, np.random.default_rng(5), (160, 120))
    again, _ = render_specimen(species, np.random.default_rng(5), (160, 120))
    assert (img.mode, img.size, mask.mode, mask.size) == ("RGB", (160, 120), "L", (160, 120))
    assert np.array_equal(np.asarray(img), np.asarray(again))
    m = np.asarray(mask) > 0
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert 0.01 < m.mean() < 0.6  # a fish, not an empty frame nor a full one
    pixels = np.asarray(img).astype(np.float32)
    assert np.abs(pixels[m].mean(0) - pixels[~m].mean(0)).max() > 3  # the fish stands out from the background


def test_refuses_a_folder_holding_a_dataset_it_did_not_write(tmp_path):
    photos = tmp_path / "Fish_Dataset" / "Trout" / "Trout"
    photos.mkdir(parents=True)
    for n in range(1, 6):
        (photos / f"{n:05d}.png").write_bytes(b"a user's photo %d" % n)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    with pytest.raises(EdgeftError, match="did not generate") as err:
        generate_dataset(tmp_path, per_class=2, image_size=SIZE, species=["Trout"])
    assert err.value.path == str(tmp_path / "Fish_Dataset")
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_an_owned_folder_is_regenerated_even_without_the_mark(tmp_path):
    stale = tmp_path / "Fish_Dataset" / "Trout" / "Trout" / "00009.png"  # an interrupted run of an older version
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    root = generate_dataset(tmp_path, per_class=2, image_size=SIZE, species=["Trout"], owned=True)
    assert sorted(p.name for p in (root / "Trout" / "Trout").iterdir()) == ["00001.png", "00002.png"]
