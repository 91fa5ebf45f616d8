"""THE preprocessing: its spec (written once into model.json/bundle.json) and its one numpy/PIL implementation.

Training evaluation, feature caching, calibration, parity and serving all call `preprocess`. Its
numerics match timm/torchvision's eval transform (Resize shorter side -> CenterCrop -> ToTensor ->
Normalize) for PIL input; tests prove it within 1e-5. Torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from edgeft.core.errors import ImageDecodeError
from edgeft.core.hashing import sha256_bytes, stable_hash

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
CROPS = ("center", "squash")
RESAMPLERS = ("pil", "opencv")
OPENCV_INTERPOLATIONS = ("bilinear", "nearest")  # the filters resampler "opencv" implements
_CHOICES = {"interpolation": INTERPOLATIONS, "crop": CROPS, "resampler": RESAMPLERS}

_PIL_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class PreprocessSpec(BaseModel):
    """The one numeric preprocessing definition shared by training, calibration, parity and serving.

    crop="center": the shorter side is resized to resize_size, then a centre square of input_size is cut.
    crop="squash": the image is resized straight to input_size x input_size.
    Pixels are scaled to [0, 1], then (x - mean) / std, channel order RGB, layout NCHW, float32.

    resampler="pil" (the default of a spec that does not name one, so runs made before the field existed keep
    their numerics) resizes the whole image with Pillow's antialiasing filter, exactly as torchvision does.
    resampler="opencv" cuts the crop from the source first, reduces it by the whole factor with OpenCV's
    integer box filter, then resizes the rest with OpenCV's bit-exact bilinear filter (INTER_LINEAR_EXACT):
    the same pixels on every platform, at about a tenth of the cost (see `resize_crop_array`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: int = 224
    resize_size: int = 256
    crop: str = "center"
    interpolation: str = "bicubic"
    resampler: str = "pil"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: str = "RGB"
    layout: str = "NCHW"

    @field_validator("interpolation", "crop", "resampler")
    @classmethod
    def _one_of(cls, v: str, info: ValidationInfo) -> str:
        allowed = _CHOICES[info.field_name]
        if v not in allowed:
            raise ValueError(f"must be one of {allowed}")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be > 0")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> PreprocessSpec:
        if self.input_size < 8 or self.resize_size < self.input_size:
            raise ValueError("need input_size >= 8 and resize_size >= input_size")
        if self.channel_order != "RGB" or self.layout != "NCHW":
            raise ValueError("only channel_order RGB and layout NCHW are supported")
        if self.resampler == "opencv" and self.interpolation not in OPENCV_INTERPOLATIONS:
            raise ValueError('resampler "opencv" supports interpolation "bilinear" or "nearest"')
        return self

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json")
        if self.resampler == "pil":  # the default: left out, so specs (and cache keys) of older runs are unchanged
            del d["resampler"]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def digest(self) -> str:
        return stable_hash(self.to_dict())


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, I;16, I, F, CMYK) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size and arr.max() > 255:
            arr = arr * (255.0 / arr.max())
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _label(source: str | Path | bytes, name: str | None) -> str:
    """How messages name an input: the caller's name, else the path, else "<bytes>"."""
    return name or (str(source) if not isinstance(source, bytes) else "<bytes>")


def _read(source: str | Path | bytes, label: str) -> bytes:
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file ({exc.strerror})", reason="unreadable", path=label) from None
    if len(data) == 0:
        raise ImageDecodeError("file is empty (0 bytes)", reason="empty", path=label)
    return data


@contextlib.contextmanager
def decode_errors(label: str) -> Iterator[None]:
    """Pillow's exceptions -> one ImageDecodeError with a short reason tag."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image too large ({exc})", reason="decompression_bomb", path=label) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can identify", reason="not_an_image", path=label) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(f"corrupt image data ({exc})", reason=reason, path=label) from None


def image_size(source: str | Path | bytes, name: str | None = None) -> tuple[int, int]:
    """(width, height) from the image header alone: nothing is decoded (a pixel budget is checked before decoding)."""
    label = _label(source, name)
    data = _read(source, label)
    with decode_errors(label), Image.open(io.BytesIO(data)) as img:
        return img.size


def check_pixels(size: tuple[int, int], max_pixels: int | None, label: str) -> None:
    """Raise ImageDecodeError(reason='too_many_pixels') when width x height exceeds max_pixels."""
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageDecodeError(
            f"image is {w}x{h} = {w * h / 1e6:.1f} Mpx; the limit is {max_pixels / 1e6:.1f} Mpx",
            reason="too_many_pixels",
            path=label,
        )


def load_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode a file or bytes into an RGB PIL image, applying EXIF orientation.

    Raises ImageDecodeError for zero-byte, truncated, corrupt, non-image or decompression-bomb input, and
    (max_pixels) for an image whose header declares more pixels than allowed, before any pixel is decoded.
    Pillow's decompression-bomb guard stays on (Image.MAX_IMAGE_PIXELS is never changed).
    """
    label = _label(source, name)
    data = _read(source, label)
    with decode_errors(label):
        img = Image.open(io.BytesIO(data))
        check_pixels(img.size, max_pixels, label)
        img.load()
    if img.width < 1 or img.height < 1:
        raise ImageDecodeError("image has no pixels", reason="empty", path=label)
    with contextlib.suppress(Exception):  # a broken EXIF block must not reject an otherwise valid image
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def _center_box(img: Image.Image, spec: PreprocessSpec) -> tuple[tuple[int, int], int, int]:
    """(resized size, left, top) of crop="center": the shorter side to resize_size, then a centred square."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    size = spec.input_size
    return (new_w, new_h), int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def resize_crop(img: Image.Image, spec: PreprocessSpec, fast: bool = False) -> Image.Image:
    """Geometric part of the preprocessing, as torchvision does it on PIL images.

    fast=True resamples only the source region under the crop (Pillow's `box`): the same filter at the same
    scale, about 40% less work, but not bit-identical (a few pixels differ by 1); serving uses it only when
    asked (--fast-preprocess), and its agreement with this reference is measured (README, `bench`).
    """
    interp = _PIL_INTERP[spec.interpolation]
    if spec.crop == "squash":
        return img.resize((spec.input_size, spec.input_size), interp)
    (new_w, new_h), left, top = _center_box(img, spec)
    size = spec.input_size
    if fast and (new_w, new_h) != img.size and spec.interpolation != "nearest":
        sx, sy = img.width / new_w, img.height / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), interp, box=box)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), interp)
    return img.crop((left, top, left + size, top + size))


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Three (1, 256) float32 tables: ((v / 255) - mean) / std for every uint8 value v, computed with the same
    float32 operations as the formula, so a lookup is bit-identical to computing it."""
    v = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
    table = (v - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    rows = tuple(np.ascontiguousarray(table[c][None, :]) for c in range(3))
    for r in rows:
        r.setflags(write=False)
    return rows


def normalize(
    rgb_uint8: np.ndarray, spec: PreprocessSpec, bgr: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 (x / 255 - mean) / std: one OpenCV table lookup per channel, written
    straight into its plane of the output (bit-identical to the formula, about half numpy's cost).
    bgr: the array is in OpenCV's BGR order; the planes come out RGB all the same (no conversion pass).
    out: a (3, H, W) float32 array to write into (a row of a batch: no copy afterwards)."""
    import cv2

    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3 or rgb_uint8.dtype != np.uint8:
        raise ValueError(f"normalize takes HxWx3 uint8 RGB, not {rgb_uint8.dtype} {rgb_uint8.shape}")
    tables = _normalize_table(tuple(spec.mean), tuple(spec.std))
    shape = (3, *rgb_uint8.shape[:2])
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"normalize writes into a contiguous float32 {shape} array, not {out.dtype} {out.shape}")
    planes = cv2.split(np.ascontiguousarray(rgb_uint8))
    for c, plane in enumerate(planes[::-1] if bgr else planes):
        cv2.LUT(plane, tables[c], dst=out[c])
    return out


def finish(
    rgb_uint8: np.ndarray, spec: PreprocessSpec, bgr: bool = False, out: np.ndarray | None = None, raw: bool = False
) -> np.ndarray:
    """The last step of every preprocessing path: `normalize` to the (3, S, S) float32 model input, or with
    raw=True the (S, S, 3) uint8 RGB image itself, for an engine that normalises inside its graph (an
    OpenVINO image input). out: the batch row to write into, of the matching shape and dtype."""
    if not raw:
        return normalize(rgb_uint8, spec, bgr, out)
    import cv2

    shape = rgb_uint8.shape
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"finish(raw=True) writes into a contiguous uint8 {shape} array, not {out.dtype} {out.shape}")
    if bgr:
        cv2.cvtColor(np.ascontiguousarray(rgb_uint8), cv2.COLOR_BGR2RGB, dst=out)
    else:
        out[...] = rgb_uint8
    return out


def frame_image(rgb_uint8: np.ndarray) -> Image.Image:
    """An HxWx3 uint8 RGB array as a PIL image, without copying it when it is contiguous."""
    if rgb_uint8.flags.c_contiguous:
        h, w = rgb_uint8.shape[:2]
        return Image.frombuffer("RGB", (w, h), rgb_uint8, "raw", "RGB", 0, 1)
    return Image.fromarray(np.ascontiguousarray(rgb_uint8), "RGB")


def kept_region(w: int, h: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the source region that becomes the model input (resampler="opencv").

    center: a centred square whose side is the shorter side x input_size / resize_size (the region the
    "pil" resampler keeps, rounded to whole pixels); squash: the whole image.
    """
    if spec.crop == "squash":
        return 0, 0, w, h
    side = min(min(w, h), max(1, int(round(min(w, h) * spec.input_size / spec.resize_size))))
    return (w - side) // 2, (h - side) // 2, side, side


def box_trim(w: int, h: int, size: int) -> tuple[int, int, int, int, int, int]:
    """(x0, y0, width, height, kx, ky): the whole box-filter factors kx = floor(w / size), ky = floor(h / size)
    (at least 1) of a w x h region, and its centred part trimmed to whole multiples of them (fewer than k
    pixels per axis); untrimmed when both factors are 1."""
    kx, ky = max(1, w // size), max(1, h // size)
    if kx < 2 and ky < 2:
        return 0, 0, w, h, 1, 1
    tw, th = (w // kx) * kx, (h // ky) * ky
    return (w - tw) // 2, (h - th) // 2, tw, th, kx, ky


def _whole_factor_reduce(region: np.ndarray, size: int) -> np.ndarray:
    """Box-filter `region` by its whole factors (`box_trim`, k >= 2 only): an exact integer average of k x k
    blocks (OpenCV's INTER_AREA at an integer scale) of the trimmed region."""
    import cv2  # loaded on first use: `edgeft --help` does not pay for OpenCV

    x0, y0, tw, th, kx, ky = box_trim(region.shape[1], region.shape[0], size)
    if kx == ky == 1:
        return region
    region = region[y0 : y0 + th, x0 : x0 + tw]
    return cv2.resize(region, (tw // kx, th // ky), interpolation=cv2.INTER_AREA)


def resize_region(region: np.ndarray, spec: PreprocessSpec, fast: bool = False) -> np.ndarray:
    """resampler="opencv": the kept region (HxWx3 uint8) -> (S, S, 3) uint8.

    Reduce it by its whole factor with an integer box filter, then resize to S x S with INTER_LINEAR_EXACT
    (or INTER_NEAREST_EXACT): integer arithmetic that OpenCV guarantees bit-exact across platforms and SIMD
    paths, so a device computes the same pixels as the workstation.
    fast: INTER_LINEAR instead, about a quarter of the cost; its SIMD paths may round a pixel differently on
    another CPU (serving's --fast-preprocess, agreement measured by `edgeft parity --fast-preprocess`).
    """
    import cv2

    s = spec.input_size
    if spec.interpolation == "nearest":
        flag = cv2.INTER_NEAREST_EXACT
    else:
        flag = cv2.INTER_LINEAR if fast else cv2.INTER_LINEAR_EXACT
        region = _whole_factor_reduce(region, s)
    if region.shape[:2] == (s, s):
        return np.ascontiguousarray(region)
    return cv2.resize(region, (s, s), interpolation=flag)


def resize_crop_array(rgb: np.ndarray, spec: PreprocessSpec, fast: bool = False) -> np.ndarray:
    """resampler="opencv": HxWx3 uint8 RGB -> (S, S, 3) uint8; the region is cut as a view (no copy)."""
    left, top, w, h = kept_region(rgb.shape[1], rgb.shape[0], spec)
    return resize_region(rgb[top : top + h, left : left + w], spec, fast)


def _kept_pixels(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The pixels of the region `resize_crop_array` keeps, cut in PIL so that only they are copied out."""
    left, top, w, h = kept_region(img.width, img.height, spec)
    if (w, h) != img.size:
        img = img.crop((left, top, left + w, top + h))
    return np.asarray(img)


def preprocess(
    img: Image.Image | np.ndarray,
    spec: PreprocessSpec,
    fast: bool = False,
    out: np.ndarray | None = None,
    raw: bool = False,
) -> np.ndarray:
    """RGB PIL image or HxWx3 uint8 RGB array -> (3, S, S) float32 ready for the model.

    fast: serving's --fast-preprocess, measured against the reference: "pil" resamples only the crop region
    (`resize_crop`), "opencv" resizes with the non-exact INTER_LINEAR (`resize_region`).
    out: a (3, S, S) float32 array to write the result into (see `normalize`).
    raw: the (S, S, 3) uint8 image before normalisation instead (see `finish`).
    """
    if isinstance(img, np.ndarray) and (img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8):
        raise ImageDecodeError(
            f"array of shape {img.shape} and dtype {img.dtype} is not an HxWx3 uint8 RGB image",
            reason="unsupported_array",
            path="<array>",
        )
    if spec.resampler == "opencv":
        if isinstance(img, np.ndarray):
            return finish(resize_crop_array(img, spec, fast), spec, out=out, raw=raw)
        return finish(resize_region(_kept_pixels(to_rgb(img), spec), spec, fast), spec, out=out, raw=raw)
    if isinstance(img, np.ndarray):
        img = frame_image(img)
    return finish(np.asarray(resize_crop(to_rgb(img), spec, fast)), spec, out=out, raw=raw)


def preprocess_file(
    source: str | Path | bytes,
    spec: PreprocessSpec,
    name: str | None = None,
    max_pixels: int | None = None,
    fast: bool = False,
    out: np.ndarray | None = None,
    raw: bool = False,
) -> np.ndarray:
    """A file or encoded bytes -> (3, S, S) float32 (written into `out` when given). fast (resampler "opencv"):
    JPEGs take `core.fastjpeg`. raw: the (S, S, 3) uint8 image instead (`finish`)."""
    if fast and spec.resampler == "opencv":
        label = _label(source, name)
        data = _read(source, label)
        from edgeft.core.fastjpeg import fast_jpeg  # after the first call, a dictionary lookup

        done = fast_jpeg(data, label, spec, max_pixels, out, raw)
        if done is not None:
            return done
        source, name = data, label
    return preprocess(load_image(source, name=name, max_pixels=max_pixels), spec, fast, out, raw)


def preprocess_many(
    sources: Sequence[str | Path | bytes],
    spec: PreprocessSpec,
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
    fast: bool = False,
    digests: list[str] | None = None,
    raw: bool = False,
) -> tuple[np.ndarray, list[int], list[tuple[int, ImageDecodeError]]]:
    """Decode + preprocess many images in parallel: ((N_ok, 3, S, S) array, ok indices, [(index, error)]).

    PIL releases the GIL while decoding and resizing, so a few threads overlap. The only batch
    preprocessing helper: feature caching, calibration, eval sets and parity all call it. fast: serving's
    --fast-preprocess (`parity --fast-preprocess` measures it). digests: a list of len(sources) that gets the
    sha256 of every source's bytes (read once, for decoding and hashing; "" where the file cannot be read).
    raw: (N_ok, S, S, 3) uint8 images before normalisation instead (`finish`).
    """

    def one(i: int) -> np.ndarray | ImageDecodeError:
        src = sources[i]
        try:
            if digests is None:
                return preprocess_file(src, spec, fast=fast, raw=raw)
            label = _label(src, None)
            data = _read(src, label)
            digests[i] = sha256_bytes(data)
            return preprocess_file(data, spec, label, fast=fast, raw=raw)
        except ImageDecodeError as exc:
            return exc

    arrays, ok, failed = [], [], []
    with ThreadPoolExecutor(max_workers=workers or decode_workers()) as pool:
        for i, res in enumerate(pool.map(one, range(len(sources)))):
            if isinstance(res, ImageDecodeError):
                failed.append((i, res))
            else:
                arrays.append(res)
                ok.append(i)
            if advance:
                advance(1)
    s = spec.input_size
    x = np.stack(arrays) if arrays else np.zeros((0, s, s, 3) if raw else (0, 3, s, s), np.uint8 if raw else np.float32)
    return x, ok, failed


def decode_workers() -> int:
    """Decode threads: one per usable core, at most 4 (PIL releases the GIL while decoding and resizing)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))
