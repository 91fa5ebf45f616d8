"""--fast-preprocess with the opencv resampler: libjpeg-turbo JPEG decoding through simplejpeg (OpenCV where it
is missing), DCT-reduced where the reference's box filter allows, EXIF orientation as Pillow applies it, the
non-exact INTER_LINEAR, and the reference path for everything that is not a plain, complete JPEG."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from edgeft.core.errors import ImageDecodeError
from edgeft.core.fastjpeg import dct_reduction
from edgeft.core.preprocess import PreprocessSpec, load_image, preprocess, preprocess_file
from tests.core.test_preprocess_opencv import OPENCV, smooth_image

STEP = 1 / 255 / 0.5  # one uint8 step after the bundle's (x / 255 - 0.5) / 0.5
SPEC = OPENCV.model_copy(update={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})


@pytest.fixture(params=["simplejpeg", "opencv"])
def decoder(request, monkeypatch):
    """Both decoders of the fast path: simplejpeg (installed with edgeft), OpenCV where it is missing."""
    if request.param == "opencv":
        monkeypatch.setitem(sys.modules, "simplejpeg", None)  # `import simplejpeg` raises ImportError
    return request.param


def jpeg(a: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def steps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / STEP


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 200)])
def test_full_size_decode_stays_within_one_step_of_the_reference(size, decoder):
    data = jpeg(smooth_image(*size))
    assert dct_reduction(*size, SPEC) == 1
    d = steps(preprocess_file(data, SPEC), preprocess_file(data, SPEC, fast=True))
    assert d.max() <= 1.0 + 1e-4
    assert 0 < d.mean() < 0.3  # INTER_LINEAR is not INTER_LINEAR_EXACT: some pixels differ, by one step


def test_the_dct_reduction_only_replaces_part_of_the_reference_box_filter():
    # kept region side = shorter side x 224/256; the reference box-filters it by floor(side / 224)
    assert dct_reduction(1280, 720, SPEC) == 2  # side 630: factor 2
    assert dct_reduction(1920, 1080, SPEC) == 4  # side 945: factor 4
    assert dct_reduction(4000, 3000, SPEC) == 1  # side 2625: factor 11, which no DCT scale divides
    assert dct_reduction(2048, 2048, SPEC) == 8  # side 1792: factor 8
    assert dct_reduction(640, 480, SPEC) == 1  # side 420: no box filter, so no reduction
    squash = SPEC.model_copy(update={"crop": "squash"})
    assert dct_reduction(1792, 448, squash) == 2  # factors 8 and 2 on the two axes: the common one
    assert dct_reduction(1921, 1081, SPEC) == 1  # a partial DCT block: a flip would misalign the blocks
    nearest = SPEC.model_copy(update={"interpolation": "nearest"})
    assert dct_reduction(1920, 1080, nearest) == 1  # nearest samples pixels; the reference never averages


@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
def test_a_reduced_decode_is_close_to_the_reference_on_a_large_photo(decoder, orientation):
    a = smooth_image(1920, 1080)
    a[:270, :480] = 0  # a dark corner: a misplaced region or a wrong turn moves it by many steps
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(a, exif=exif.tobytes())
    d = steps(preprocess_file(data, SPEC), preprocess_file(data, SPEC, fast=True))
    assert d.mean() < 2.5 and d.max() <= 12  # a DCT filter is not a box filter, but it averages the same pixels


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_applies_it(orientation, decoder):
    a = smooth_image(640, 480)
    a[:120, :240] = 0  # a dark corner: any wrong flip or rotation moves it
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(a, exif=exif.tobytes())
    ref, fast = preprocess_file(data, SPEC), preprocess_file(data, SPEC, fast=True)
    assert steps(ref, fast).max() <= 1.0 + 1e-4


def test_greyscale_jpeg_takes_the_fast_path_and_gives_grey_rgb(decoder):
    data = jpeg(smooth_image(640, 480), mode="L")
    fast = preprocess_file(data, SPEC, fast=True)
    assert np.array_equal(fast[0], fast[1]) and np.array_equal(fast[1], fast[2])
    assert steps(preprocess_file(data, SPEC), fast).max() <= 1.0 + 1e-4


def test_what_is_not_a_plain_complete_jpeg_takes_the_reference_decoder(decoder):
    a = smooth_image(320, 240)
    png = io.BytesIO()
    Image.fromarray(a).save(png, "PNG")
    cmyk = jpeg(a, mode="CMYK")
    for data in (png.getvalue(), cmyk):
        expected = preprocess(load_image(data), SPEC, fast=True)
        assert np.array_equal(preprocess_file(data, SPEC, fast=True), expected)
    truncated = jpeg(a)[:-600]
    for fast in (False, True):
        with pytest.raises(ImageDecodeError) as err:
            preprocess_file(truncated, SPEC, name="cut.jpg", fast=fast)
        assert err.value.path == "cut.jpg" and err.value.reason == "truncated"


def test_the_pixel_budget_is_checked_before_the_fast_decode():
    data = jpeg(smooth_image(640, 480))
    with pytest.raises(ImageDecodeError) as err:
        preprocess_file(data, SPEC, name="big.jpg", max_pixels=100_000, fast=True)
    assert err.value.reason == "too_many_pixels" and err.value.path == "big.jpg"


def test_the_pil_resampler_ignores_the_opencv_decoder():
    spec = PreprocessSpec(input_size=224, resize_size=256, interpolation="bilinear")
    data = jpeg(smooth_image(640, 480))
    expected = preprocess(load_image(data), spec, fast=True)
    assert np.array_equal(preprocess_file(data, spec, fast=True), expected)


def test_simplejpeg_decodes_the_pixels_pillow_decodes():
    import simplejpeg

    for size in ((640, 480), (333, 251)):
        data = jpeg(smooth_image(*size, seed=5))
        assert np.array_equal(simplejpeg.decode_jpeg(data, "RGB"), np.asarray(load_image(data)))


def test_every_input_kind_can_be_written_straight_into_a_batch_row(tmp_path):
    from edgeft.serve.predictor import prepare_item

    frame = smooth_image(640, 480)
    data = jpeg(frame)
    path = tmp_path / "f.jpg"
    path.write_bytes(data)
    tensor = preprocess(frame, SPEC)
    batch = np.full((6, 3, 224, 224), np.nan, np.float32)
    items = [frame, data, path, Image.fromarray(frame), tensor, data]
    for j, (item, fast) in enumerate(zip(items, [False, False, True, False, False, True], strict=True)):
        row = batch[j]
        assert prepare_item(item, SPEC, fast=fast, out=row) is row
        assert np.array_equal(row, prepare_item(item, SPEC, fast=fast))
    with pytest.raises(ValueError, match="float32"):
        preprocess(frame, SPEC, out=np.empty((3, 224, 224), np.float64))


@pytest.mark.parametrize("fast", [False, True])
def test_raw_rows_are_the_rgb_images_the_tensors_are_normalised_from(fast, decoder, tmp_path):
    """raw=True stops before normalisation (an engine that normalises in its graph): the same pixels, in RGB,
    from every input kind and both JPEG decoders (OpenCV's decodes BGR)."""
    from edgeft.core.preprocess import normalize
    from edgeft.serve.predictor import prepare_item

    frame = smooth_image(640, 480, seed=3)
    data = jpeg(frame)
    path = tmp_path / "f.png"
    Image.fromarray(frame).save(path)
    for item in (frame, data, path, Image.fromarray(frame)):
        row = np.zeros((224, 224, 3), np.uint8)
        assert prepare_item(item, SPEC, fast=fast, out=row, raw=True) is row
        assert np.array_equal(normalize(row, SPEC), prepare_item(item, SPEC, fast=fast))
    # a tensor cannot be turned back into the image: refused by name, not fed as garbage
    with pytest.raises(ImageDecodeError, match="cannot feed an engine that takes uint8 images"):
        prepare_item(preprocess(frame, SPEC), SPEC, fast=fast, raw=True)
    with pytest.raises(ValueError, match="uint8"):
        prepare_item(frame, SPEC, fast=fast, out=np.empty((224, 224, 3), np.float32), raw=True)
