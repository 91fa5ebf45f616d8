"""CPU throughput of a bundle's artifacts next to torch eager FP32, as ratios from one run.

    python benchmarks/bench_export.py BUNDLE_OR_RUN [--batches 1,8] [--seconds 2] [--rounds 3] [--json OUT]

A run dir is exported first when it has no bundle yet. Engines are measured round-robin over several
rounds and the median is reported, so a noisy neighbour slows every engine alike instead of one.
ONNX Runtime runs one session with all physical cores; OpenVINO uses the THROUGHPUT hint with an
AsyncInferQueue of its optimal number of requests (how edgeft's runtime serves it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeft.manifest import BundleManifest
from edgeft.runtime.backends import physical_cores


def _bundle_dir(path: Path) -> Path:
    if (path / "bundle.json").is_file():
        return path
    if (path / "model.json").is_file():
        if not (path / "bundle" / "bundle.json").is_file():
            from edgeft.export import build_bundle

            print(f"exporting {path} first ...", flush=True)
            build_bundle(path, progress=lambda m: print(f"  {m}", flush=True))
        return path / "bundle"
    raise SystemExit(f"{path}: neither a bundle (bundle.json) nor a run dir (model.json)")


def _torch(bundle: BundleManifest, bundle_dir: Path, threads: int) -> Callable[[np.ndarray], None]:
    import torch

    from edgeft.train.model import load_run

    torch.set_num_threads(threads)
    run = Path(bundle.source["run_dir"])
    model, _ = load_run(run if run.is_absolute() else bundle_dir / run)

    def infer(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    return infer


def _ort(path: Path, threads: int) -> Callable[[np.ndarray], None]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"input": x})


class _OvQueue:
    """THROUGHPUT-hint compiled model fed through an AsyncInferQueue: several requests in flight."""

    def __init__(self, xml: Path, precision: str, threads: int):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = ov.Core().compile_model(str(xml), "CPU", config)
        self.nireq = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.nireq)

    def run_for(self, x: np.ndarray, seconds: float) -> float:
        """Images per second while keeping every request busy for `seconds`."""
        done = [0]
        self.queue.set_callback(lambda _req, _ud: done.__setitem__(0, done[0] + 1))
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.queue.start_async({0: x}, share_inputs=True)
        self.queue.wait_all()
        return done[0] * len(x) / (time.perf_counter() - start)


def _sync_rate(fn: Callable[[np.ndarray], None], x: np.ndarray, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    s = bundle.preprocess_spec.input_size
    inputs = {b: np.random.default_rng(0).standard_normal((b, 3, s, s)).astype(np.float32) for b in batches}

    engines: dict[str, Callable[[np.ndarray, float], float]] = {}
    torch_fn = _torch(bundle, bundle_dir, threads)
    engines["torch eager fp32"] = lambda x, sec: _sync_rate(torch_fn, x, sec)
    for art in bundle.artifact_list():
        if art.format == "onnx":
            fn = _ort(bundle_dir / art.path, threads)
            engines[f"ORT {art.name}"] = lambda x, sec, fn=fn: _sync_rate(fn, x, sec)
        elif art.format == "openvino":
            q = _OvQueue(bundle_dir / art.path, art.precision, threads)
            engines[f"OpenVINO {art.name} (THROUGHPUT x{q.nireq})"] = q.run_for
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
