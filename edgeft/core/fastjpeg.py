"""--fast-preprocess of JPEG files (resampler "opencv"): libjpeg-turbo decoding straight to RGB, DCT-reduced
where the reference's box filter allows, EXIF orientation as Pillow applies it, and the non-exact INTER_LINEAR.

Not bit-exact: `edgeft parity --fast-preprocess` measures its agreement per bundle. `preprocess_file` calls
`fast_jpeg`; anything it declines (None) takes THE preprocessing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from edgeft.core.preprocess import (
    PreprocessSpec,
    box_trim,
    check_pixels,
    decode_errors,
    finish,
    kept_region,
    resize_crop_array,
    resize_region,
)

# EXIF orientation -> the numpy view of PIL's ImageOps.exif_transpose (tested equal for all eight)
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _box_region(w: int, h: int, spec: PreprocessSpec) -> tuple[int, int, int, int, int, int]:
    """(left, top, width, height, kx, ky) in source pixels of what the reference box-filters: the kept region
    trimmed to whole multiples of its factors kx, ky (`box_trim`)."""
    left, top, rw, rh = kept_region(w, h, spec)
    x0, y0, tw, th, kx, ky = box_trim(rw, rh, spec.input_size)
    return left + x0, top + y0, tw, th, kx, ky


def dct_reduction(w: int, h: int, spec: PreprocessSpec) -> int:
    """The JPEG DCT scale-down (8, 4, 2, else 1) for --fast-preprocess of a w x h (as displayed) image.

    The largest k that divides the image size (no partial DCT block, so a flip or rotation keeps the blocks
    aligned) and the whole factors the reference box-filters the kept region by: each reduced pixel then
    averages k x k source pixels, and the rest of the box filter and the bilinear resize are applied as the
    reference applies them. The region's offset is rounded to whole reduced pixels, a shift of at most k/2
    source pixels (half a pixel after the box filter). Never with nearest-neighbour sampling, which the
    reference does not box-filter."""
    if spec.interpolation == "nearest":
        return 1
    _, _, _, _, kx, ky = _box_region(w, h, spec)
    return next((k for k in (8, 4, 2) if kx % k == 0 and ky % k == 0 and not (w % k or h % k)), 1)


def _decode_reduced(data: bytes, k: int, size: tuple[int, int]) -> tuple[np.ndarray, bool] | None:
    """JPEG bytes -> (HxWx3 uint8 at 1/k scale in stored orientation, is_bgr), or None when the decoder refuses.

    libjpeg-turbo through simplejpeg (straight to RGB, its pixels equal to Pillow's full-size decode), else
    through OpenCV (BGR)."""
    try:
        import simplejpeg
    except ImportError:  # a platform without its wheel: OpenCV's decoder
        import cv2

        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
            k, cv2.IMREAD_REDUCED_COLOR_8
        )
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
        return (bgr, True) if bgr is not None and bgr.ndim == 3 else None
    w, h = size
    try:
        rgb = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // k), min_width=-(-w // k), min_factor=k)
    except ValueError:  # strict: a corrupt stream is left to the reference decoder and its message
        return None
    return rgb, False


def fast_jpeg(
    data: bytes,
    label: str,
    spec: PreprocessSpec,
    max_pixels: int | None,
    out: np.ndarray | None = None,
    raw: bool = False,
) -> np.ndarray | None:
    """--fast-preprocess of a JPEG (resampler="opencv"): libjpeg-turbo decodes straight to RGB, at a reduced
    DCT scale when the kept region allows it, and the non-exact INTER_LINEAR resizes. None when the file is not
    a plain RGB/greyscale JPEG or the decoder refuses it: the reference path takes it (and reports any error).
    EXIF orientation is applied as `load_image` does; the pixel budget is checked first."""
    complete = data.endswith(b"\xff\xd9") or data.rstrip(b"\0").endswith(b"\xff\xd9")
    if not data.startswith(b"\xff\xd8\xff") or not complete:
        return None  # not a JPEG, or a truncated one (a decoder would return its grey rest; Pillow refuses it)
    with decode_errors(label):
        img = Image.open(io.BytesIO(data))
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        check_pixels(img.size, max_pixels, label)
        orient = None
        with contextlib.suppress(Exception):  # as load_image: a broken EXIF block keeps the image as stored
            orient = _ORIENT.get(img.getexif().get(0x0112, 1))  # the raw tag, looked up as exif_transpose does
    w, h = img.size[::-1] if orient in (_ORIENT[5], _ORIENT[6], _ORIENT[7], _ORIENT[8]) else img.size
    k = dct_reduction(w, h, spec)
    decoded = _decode_reduced(data, k, img.size)
    if decoded is None:
        return None
    pixels, bgr = decoded
    if orient is not None:
        pixels = np.ascontiguousarray(orient(pixels))
    if k == 1:
        return finish(resize_crop_array(pixels, spec, fast=True), spec, bgr, out, raw)
    x0, y0, tw, th, _, _ = _box_region(w, h, spec)  # k divides the sizes; the offsets are rounded
    left, top = min(round(x0 / k), (w - tw) // k), min(round(y0 / k), (h - th) // k)
    region = pixels[top : top + th // k, left : left + tw // k]
    return finish(resize_region(region, spec, fast=True), spec, bgr, out, raw)
