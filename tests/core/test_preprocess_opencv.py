"""resampler="opencv": the region it keeps, its integer box reduction, one result for files and frames, and
older specs (no resampler field) keeping their numerics and cache keys."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgeft.core.preprocess import PreprocessSpec, load_image, preprocess, resize_crop, resize_crop_array

OPENCV = PreprocessSpec(input_size=224, resize_size=256, interpolation="bilinear", resampler="opencv")


def smooth_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(xx / 41.0)[..., None] * np.cos(yy / 29.0)[..., None]
    return np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def test_a_spec_without_a_resampler_is_pil_with_its_old_cache_key():
    old = {"input_size": 224, "resize_size": 256, "crop": "center", "interpolation": "bicubic"}
    spec = PreprocessSpec(**old)
    assert spec.resampler == "pil"
    assert "resampler" not in spec.to_dict()
    assert OPENCV.to_dict()["resampler"] == "opencv"
    assert OPENCV.digest() != OPENCV.model_copy(update={"resampler": "pil"}).digest()


def test_opencv_refuses_filters_it_does_not_implement():
    with pytest.raises(ValueError, match="opencv"):
        PreprocessSpec(resampler="opencv", interpolation="bicubic")
    with pytest.raises(ValueError, match="resampler"):
        PreprocessSpec(resampler="simd")


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1920, 1080), (200, 150)])
def test_only_the_centre_region_counts(size):
    w, h = size
    img = smooth_image(w, h)
    side = round(min(w, h) * 224 / 256)
    left, top = (w - side) // 2, (h - side) // 2
    outside = img.copy()
    outside[:top], outside[top + side :] = 255, 0
    outside[:, :left], outside[:, left + side :] = 0, 255
    assert np.array_equal(resize_crop_array(img, OPENCV), resize_crop_array(outside, OPENCV))
    # ...and a pixel just inside the region does count
    inside = img.copy()
    inside[top + side // 2 - 8 : top + side // 2 + 8, left + side // 2 - 8 : left + side // 2 + 8] = 0
    assert not np.array_equal(resize_crop_array(img, OPENCV), resize_crop_array(inside, OPENCV))


def test_a_whole_factor_is_an_exact_block_average():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    spec = PreprocessSpec(input_size=32, resize_size=32, crop="squash", interpolation="bilinear", resampler="opencv")
    out = resize_crop_array(img, spec).astype(np.int64)
    blocks = img.reshape(32, 3, 32, 3, 3).astype(np.int64).sum(axis=(1, 3))
    assert np.abs(out - blocks / 9.0).max() <= 0.5 + 1e-9  # each pixel is its 3x3 block's mean, rounded


@pytest.mark.parametrize("size", [(640, 480), (333, 517)])
def test_same_region_and_scale_as_the_pil_resampler(size):
    """A different filter over the same geometry: on a smooth image the two stay within a few uint8 steps (a
    shifted or mis-scaled region would differ by tens)."""
    img = smooth_image(*size)
    pil = np.asarray(resize_crop(Image.fromarray(img), OPENCV.model_copy(update={"resampler": "pil"})))
    cv = resize_crop_array(img, OPENCV)
    assert cv.shape == pil.shape == (224, 224, 3)
    assert np.abs(cv.astype(int) - pil.astype(int)).mean() < 2.0


def test_files_images_and_frames_give_the_same_tensor():
    img = smooth_image(640, 480, seed=5)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    from_file = preprocess(load_image(buf.getvalue()), OPENCV)
    from_frame = preprocess(img, OPENCV)
    from_strided = preprocess(np.ascontiguousarray(img[:, ::-1])[:, ::-1], OPENCV)
    assert from_file.shape == (3, 224, 224) and from_file.dtype == np.float32
    assert np.array_equal(from_file, from_frame) and np.array_equal(from_frame, from_strided)
    assert not np.array_equal(from_frame, preprocess(img, OPENCV.model_copy(update={"resampler": "pil"})))


@pytest.mark.parametrize("resampler", ["opencv", "pil"])
@pytest.mark.parametrize(
    "array",
    [
        np.full((40, 40), 128, np.uint8),
        np.zeros((40, 40, 1), np.uint8),
        np.zeros((40, 40, 4), np.uint8),
        np.zeros((40, 40, 3), np.float32),
    ],
    ids=["grey", "one-channel", "rgba", "float"],
)
def test_arrays_that_are_not_rgb_uint8_are_refused_not_read_as_garbage(array, resampler):
    from edgeft.core.errors import ImageDecodeError

    spec = OPENCV if resampler == "opencv" else OPENCV.model_copy(update={"resampler": "pil"})
    with pytest.raises(ImageDecodeError, match="HxWx3 uint8"):
        preprocess(array, spec)
