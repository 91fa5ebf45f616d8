"""CPU throughput of a bundle's artifacts next to torch eager FP32, as ratios from one run.

    python benchmarks/bench_export.py BUNDLE_OR_RUN [--batches 1,8] [--seconds 2] [--rounds 3] [--json OUT]

A run dir is exported first when it has no bundle yet. Every model runs through `edgeft.engines`, the classes
export's gate and serving use: torch eager (TorchEngine), ONNX Runtime with all physical cores, and OpenVINO
with the THROUGHPUT hint fed one batch per parallel infer request. Engines are measured round-robin over
several rounds and the median is reported, so a noisy neighbour slows every engine alike instead of one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeft.core.manifests import BundleManifest
from edgeft.core.progress import Reporter
from edgeft.engines.base import Engine, physical_cores
from edgeft.engines.onnxruntime import OnnxRuntimeEngine
from edgeft.engines.openvino import OpenVinoEngine
from edgeft.engines.torch import TorchEngine

Rate = Callable[[np.ndarray, float], float]


class _Print(Reporter):
    def task(self, name: str, total: int | None = None) -> None:
        print(f"  {name}", flush=True)

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)


def _bundle_dir(path: Path) -> Path:
    if (path / "bundle.json").is_file():
        return path
    if (path / "model.json").is_file():
        if not (path / "bundle" / "bundle.json").is_file():
            from edgeft.export import build_bundle

            print(f"exporting {path} first ...", flush=True)
            build_bundle(path, reporter=_Print())
        return path / "bundle"
    raise SystemExit(f"{path}: neither a bundle (bundle.json) nor a run dir (model.json)")


def _rate(engine: Engine, copies: int) -> Rate:
    """Images per second of `engine` kept busy with `copies` batches per call, for `seconds`."""

    def run(x: np.ndarray, seconds: float) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            engine.infer_many([x] * copies)
            n += copies * len(x)
        return n / (time.perf_counter() - start)

    return run


def _engines(bundle: BundleManifest, bundle_dir: Path, threads: int) -> dict[str, Rate]:
    s, classes = bundle.preprocess.input_size, len(bundle.classes)
    common = {"input_shape": (3, s, s), "num_outputs": classes}
    run = Path(bundle.source.run_dir or "")
    torch = TorchEngine(run if run.is_absolute() else bundle_dir / run, threads=threads, **common).load()
    engines = {"torch eager fp32": _rate(torch, 1)}
    for art in bundle.artifacts:
        path = bundle_dir / art.path
        if art.format == "onnx":
            ort = OnnxRuntimeEngine(path, precision=art.precision, threads=threads, label=art.name, **common).load()
            engines[f"ORT {art.name}"] = _rate(ort, 1)
        elif art.format == "openvino":
            ov = OpenVinoEngine(
                path, precision=art.precision, hint="THROUGHPUT", threads=threads, label=art.name, **common
            ).load()
            engines[f"OpenVINO {art.name} (THROUGHPUT x{ov.nireq})"] = _rate(ov, ov.nireq)
    return engines


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("path", type=Path, help="bundle dir or run dir")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per engine, batch and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="default: physical cores")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    bundle_dir = _bundle_dir(args.path)
    bundle = BundleManifest.load(bundle_dir)
    threads = args.threads or physical_cores()
    batches = [int(b) for b in args.batches.split(",")]
    s = bundle.preprocess.input_size
    inputs = {b: np.random.default_rng(0).standard_normal((b, 3, s, s)).astype(np.float32) for b in batches}
    engines = _engines(bundle, bundle_dir, threads)
    for run in engines.values():  # warm-up: first calls compile kernels and fill caches
        for b in batches:
            run(inputs[b], 0.3)

    rates: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in engines}
    for r in range(args.rounds):
        for name, run in engines.items():
            for b in batches:
                rates[name][b].append(run(inputs[b], args.seconds))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    med = {n: {b: statistics.median(v) for b, v in per.items()} for n, per in rates.items()}
    ref = med["torch eager fp32"]
    width = max(len(n) for n in med) + 2
    head = "".join(f"{f'b={b} img/s':>12}{'x torch':>9}" for b in batches)
    print(f"\n{bundle.name}: {threads} threads, median of {args.rounds} rounds x {args.seconds:g}s\n")
    print(f"{'engine':<{width}}{head}")
    for name, per in med.items():
        cells = "".join(f"{per[b]:>12.1f}{per[b] / ref[b]:>8.2f}x" for b in batches)
        print(f"{name:<{width}}{cells}")
    best = {b: max(med, key=lambda n, b=b: med[n][b]) for b in batches}
    for b in batches:
        print(f"best at batch {b}: {best[b]} ({med[best[b]][b]:.1f} img/s, {med[best[b]][b] / ref[b]:.2f}x torch)")
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "median_img_per_s": med, "rounds": rates}, indent=2))


if __name__ == "__main__":
    main()
