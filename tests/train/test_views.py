"""Preprocessing crop rule for wide images, and mirrored feature views keyed honestly in the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgeft.core.progress import Reporter
from edgeft.data.layouts import Dataset, Record
from edgeft.models.backbones import create_backbone, weights_digest
from edgeft.train.config import TrainConfig
from edgeft.train.features import FeatureExtractor
from edgeft.train.inputs import with_preprocess


def _ds(w: int, h: int) -> Dataset:
    return Dataset(
        Path("/d"), "folder", ["a"], [Record(f"a/{i}.png", "a", str(i), width=w, height=h) for i in range(5)]
    )


def test_wide_images_are_squashed_not_centre_cropped():
    bb = create_backbone("small_cnn")
    bb.preprocess = bb.preprocess.model_copy(update={"crop": "center"})
    assert with_preprocess(bb, TrainConfig(), _ds(260, 130), Reporter()).preprocess.crop == "squash"
    assert with_preprocess(bb, TrainConfig(), _ds(256, 256), Reporter()).preprocess.crop == "center"
    assert with_preprocess(bb, TrainConfig(crop="center"), _ds(260, 130), Reporter()).preprocess.crop == "center"
    assert with_preprocess(bb, TrainConfig(crop="squash"), _ds(256, 256), Reporter()).preprocess.crop == "squash"


def test_the_resampler_is_the_runs_choice_and_opencv_resizes_bilinearly():
    bb = create_backbone("small_cnn")
    bb.preprocess = bb.preprocess.model_copy(update={"interpolation": "bicubic"})
    default = with_preprocess(bb, TrainConfig(), _ds(256, 256), Reporter()).preprocess
    assert (default.resampler, default.interpolation) == ("opencv", "bilinear")
    pil = with_preprocess(bb, TrainConfig(resampler="pil"), _ds(256, 256), Reporter()).preprocess
    assert (pil.resampler, pil.interpolation) == ("pil", "bicubic")
    # a transfer (--init) of a run made with pil keeps pil unless told otherwise
    transfer = with_preprocess(bb, TrainConfig(init=Path("runs/fish/old")), _ds(256, 256), Reporter()).preprocess
    assert (transfer.resampler, transfer.interpolation) == ("pil", "bicubic")
    told = with_preprocess(bb, TrainConfig(init=Path("r"), resampler="opencv"), _ds(256, 256), Reporter())
    assert told.preprocess.resampler == "opencv"


def test_mirrored_view_is_the_mirrored_image_and_cached_under_its_own_key(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "a_mirrored.png")
    bb = create_backbone("small_cnn")
    bb.preprocess = bb.preprocess.model_copy(update={"crop": "squash", "interpolation": "nearest"})
    fx = FeatureExtractor(
        bb.module, bb.preprocess, weights_digest(bb.module), bb.arch, engine="torch", cache_dir=tmp_path / "c"
    )
    base = fx.extract([tmp_path / "a.png"], ["sha-a"])
    flipped = fx.extract([tmp_path / "a.png"], ["sha-a"], view="hflip")
    mirrored_file = fx.extract([tmp_path / "a_mirrored.png"], ["sha-m"])
    assert not np.allclose(base, flipped)
    np.testing.assert_allclose(flipped, mirrored_file, atol=1e-4)
    assert (fx.dir / "sh" / "sha-a.npy").is_file() and (fx.dir / "sh" / "sha-a-hflip.npy").is_file()
