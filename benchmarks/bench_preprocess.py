"""Decode + preprocess cost, and the fast path's agreement with THE reference preprocessing.

    python benchmarks/bench_preprocess.py BUNDLE JPEG_DIR [--frames 32] [--repeat 3]

Timings are single-thread CPU ms per image (time.thread_time), for a folder of JPEGs (decode + preprocess) and
for decoded 640x480 frames (preprocess only, the camera path). Five implementations are timed:
  legacy:    the Pillow code before the lookup-table change (arithmetic normalisation), inlined here verbatim;
  pil:       resampler "pil" (runs made before the opencv resampler; bit-identical to legacy);
  pil fast:  resampler "pil" with --fast-preprocess (only the crop region is resampled);
  opencv:    resampler "opencv", the default of new runs (region first, integer box filter, bit-exact
             bilinear; it is the reference of the runs that use it, not an approximation of "pil");
  cv fast:   resampler "opencv" with --fast-preprocess (libjpeg-turbo JPEG decoding through simplejpeg,
             DCT-reduced where the box filter allows, and the non-exact INTER_LINEAR).
The process tunes glibc malloc as the CLI does (core/allocator.py; --default-malloc keeps glibc's defaults).
Agreement: every JPEG through the bundle's ONNX FP32 engine with each fast path's inputs against its reference's
(pil fast vs pil, cv fast vs opencv), compared by THE comparator (top-1 agreement with its 95% Wilson interval,
max |Δlogit|). The end-to-end check of a bundle's own fast path is `edgeft parity --fast-preprocess`.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgeft.check.comparator import compare
from edgeft.core.allocator import tune_allocator
from edgeft.core.manifests import BundleManifest
from edgeft.core.preprocess import PreprocessSpec, load_image, resize_crop, to_rgb
from edgeft.engines.select import open_bundle
from edgeft.serve.bench import synthetic_frames
from edgeft.serve.predictor import prepare_item


def legacy_preprocess(item, spec) -> np.ndarray:
    img = Image.fromarray(item, "RGB") if isinstance(item, np.ndarray) else load_image(item)
    rgb = np.asarray(resize_crop(to_rgb(img), spec))
    x = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def cpu_ms(fn, items, repeat: int) -> float:
    fn(items[0])
    t0 = time.thread_time()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.thread_time() - t0) * 1000.0 / (repeat * len(items))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("jpegs", type=Path)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--time-files", type=int, default=64, help="JPEGs used for the timings")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's own thresholds (the CLI tunes them)")
    args = ap.parse_args()
    tuned = False if args.default_malloc else tune_allocator()

    bundle = BundleManifest.load(args.bundle)
    spec = bundle.preprocess.model_copy(update={"resampler": "pil"})
    opencv = PreprocessSpec(**{**spec.model_dump(), "resampler": "opencv", "interpolation": "bilinear"})
    paths = sorted(p for p in args.jpegs.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    blobs = [p.read_bytes() for p in paths]
    frames = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in synthetic_frames(args.frames)]
    print(f"bundle {args.bundle} ({spec.interpolation}, {spec.resize_size} -> {spec.input_size})")
    print(f"malloc: {'tuned as the CLI tunes it (core/allocator.py)' if tuned else 'glibc defaults'}")
    print(f"{len(paths)} JPEGs under {args.jpegs}; timings on {min(len(blobs), args.time_files)} of them")
    print("single-thread CPU ms per image    legacy    pil  pil fast  opencv  cv fast")
    ways = {
        "legacy": lambda it: legacy_preprocess(it, spec),
        "pil": lambda it: prepare_item(it, spec),
        "fast": lambda it: prepare_item(it, spec, fast=True),
        "opencv": lambda it: prepare_item(it, opencv),
        "cv fast": lambda it: prepare_item(it, opencv, fast=True),
    }
    decode = cpu_ms(load_image, blobs[: args.time_files], args.repeat)
    for name, items in (("JPEG file (decode + preprocess)", blobs[: args.time_files]), ("640x480 frame", frames)):
        ms = [cpu_ms(fn, items, args.repeat) for fn in ways.values()]
        print(f"{name:33s} {ms[0]:6.2f} {ms[1]:6.2f} {ms[2]:9.2f} {ms[3]:7.2f} {ms[4]:8.2f}")
    print(f"of which decoding a JPEG alone (Pillow, libjpeg-turbo): {decode:.2f}")

    same = all(np.array_equal(legacy_preprocess(b, spec), prepare_item(b, spec)) for b in blobs[:16] + frames[:4])
    print(f"pil == legacy, bit for bit: {same}")
    engine = open_bundle(args.bundle, "onnxruntime", "fp32", batch_size=32)
    with engine:
        for name, ref_spec in (("pil fast vs pil", spec), ("cv fast vs opencv", opencv)):
            ref = np.stack([prepare_item(b, ref_spec) for b in blobs])
            fast = np.stack([prepare_item(b, ref_spec, fast=True) for b in blobs])
            steps = np.abs(ref - fast).max() * 255 * min(ref_spec.std)
            ref_logits = np.concatenate([engine.infer(ref[i : i + 32]) for i in range(0, len(ref), 32)])
            fast_logits = np.concatenate([engine.infer(fast[i : i + 32]) for i in range(0, len(fast), 32)])
            c = compare(ref_logits, fast_logits, bundle.classes, sources=[str(p) for p in paths])
            print(
                f"{name} on {c.n} JPEGs ({engine.describe()}): max |Δ input| {steps:.1f} uint8 steps, top-1 "
                f"agreement {c.agreement:.4f} (95% CI {c.agreement_low:.4f}-{c.agreement_high:.4f}), flipped "
                f"{c.n_flipped}, max |Δlogit| {c.max_abs_logit_diff:.2e}"
            )


if __name__ == "__main__":
    main()
