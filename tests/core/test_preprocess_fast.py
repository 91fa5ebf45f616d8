"""THE preprocessing's faster pieces: the lookup-table normalisation and zero-copy frames are bit-identical to
the formula; the fast crop resampling stays within one uint8 step of the reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeft.core.preprocess import PreprocessSpec, frame_image, normalize, preprocess, resize_crop

SPEC = PreprocessSpec(input_size=224, resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def formula(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The documented definition: pixels to [0, 1], then (x - mean) / std, HWC -> CHW, float32."""
    x = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def test_normalisation_is_bit_identical_to_the_formula_for_every_value():
    every = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1 x 256 x 3
    out = normalize(every, SPEC)
    assert out.dtype == np.float32 and out.shape == (3, 1, 256) and out.flags.c_contiguous
    assert out.tobytes() == formula(every, SPEC).tobytes()


def test_frames_become_images_without_a_copy_and_with_the_same_pixels():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(frame_image(frame)), frame)
    strided = frame[:, ::2]  # not contiguous: copied, same pixels
    assert np.array_equal(np.asarray(frame_image(strided)), strided)
    assert np.array_equal(preprocess(frame_image(frame), SPEC), preprocess(Image.fromarray(frame), SPEC))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "nearest"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (1000, 700)])
def test_fast_resampling_stays_within_one_step_of_the_reference(interpolation, size):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    smooth = 128 + 100 * np.sin(xx / 23.0)[..., None] * np.cos(yy / 17.0)[..., None]
    img = Image.fromarray(np.clip(smooth + rng.normal(0, 10, (*smooth.shape[:2], 3)), 0, 255).astype(np.uint8))
    spec = SPEC.model_copy(update={"interpolation": interpolation})
    ref = np.asarray(resize_crop(img, spec)).astype(int)
    fast = np.asarray(resize_crop(img, spec, fast=True)).astype(int)
    assert ref.shape == fast.shape == (224, 224, 3)
    diff = np.abs(ref - fast)
    if interpolation == "nearest":
        assert not diff.any(), "nearest has no fast path: identical"
    else:
        assert diff.max() <= 2 and (diff > 0).mean() < 0.05
