"""Decode + preprocess cost, and the fast path's agreement with THE reference preprocessing.

    python benchmarks/bench_preprocess.py BUNDLE JPEG_DIR [--frames 32] [--repeat 3]

Timings are single-thread CPU ms per image (time.thread_time), for a folder of JPEGs (decode + preprocess) and
for decoded 640x480 frames (preprocess only, the camera path). Three implementations are timed:
  legacy:    the code before this change (full-image copy, arithmetic normalisation), inlined here verbatim;
  reference: THE preprocessing now (zero-copy frames, lookup-table normalisation: bit-identical to legacy);
  fast:      --fast-preprocess (only the crop region is resampled).
Agreement: every JPEG through the bundle's ONNX FP32 engine with reference and with fast inputs, compared by
THE comparator (top-1 agreement with its 95% Wilson interval, max |Δlogit|).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgeft.check.comparator import compare
from edgeft.core.manifests import BundleManifest
from edgeft.core.preprocess import load_image, resize_crop, to_rgb
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
    args = ap.parse_args()

    bundle = BundleManifest.load(args.bundle)
    spec = bundle.preprocess
    paths = sorted(p for p in args.jpegs.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    blobs = [p.read_bytes() for p in paths]
    frames = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in synthetic_frames(args.frames)]
    print(f"bundle {args.bundle} ({spec.interpolation}, {spec.resize_size} -> {spec.input_size})")
    print(f"{len(paths)} JPEGs under {args.jpegs}; timings on {min(len(blobs), args.time_files)} of them")
    print("single-thread CPU ms per image    legacy  reference   fast")
    ways = {
        "legacy": lambda it: legacy_preprocess(it, spec),
        "reference": lambda it: prepare_item(it, spec),
        "fast": lambda it: prepare_item(it, spec, fast=True),
    }
    for name, items in (("JPEG file (decode + preprocess)", blobs[: args.time_files]), ("640x480 frame", frames)):
        ms = [cpu_ms(fn, items, args.repeat) for fn in ways.values()]
        print(f"{name:33s} {ms[0]:6.2f} {ms[1]:10.2f} {ms[2]:6.2f}")

    same = all(np.array_equal(legacy_preprocess(b, spec), prepare_item(b, spec)) for b in blobs[:16] + frames[:4])
    print(f"reference == legacy, bit for bit: {same}")
    ref = np.stack([prepare_item(b, spec) for b in blobs])
    fast = np.stack([prepare_item(b, spec, fast=True) for b in blobs])
    print(f"max |Δ input| fast vs reference: {np.abs(ref - fast).max():.4f} (one uint8 step = {1 / 255 / 0.2:.4f})")
    engine = open_bundle(args.bundle, "onnxruntime", "fp32", batch_size=32)
    with engine:
        ref_logits = np.concatenate([engine.infer(ref[i : i + 32]) for i in range(0, len(ref), 32)])
        fast_logits = np.concatenate([engine.infer(fast[i : i + 32]) for i in range(0, len(fast), 32)])
    c = compare(ref_logits, fast_logits, bundle.classes, sources=[str(p) for p in paths])
    print(
        f"fast vs reference on {c.n} JPEGs ({engine.describe()}): top-1 agreement {c.agreement:.4f} "
        f"(95% CI {c.agreement_low:.4f}-{c.agreement_high:.4f}), flipped {c.n_flipped}, "
        f"max |Δlogit| {c.max_abs_logit_diff:.2e}"
    )


if __name__ == "__main__":
    main()
