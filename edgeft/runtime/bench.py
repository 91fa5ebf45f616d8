"""Benchmark every runnable backend x precision x batch size: engine alone and end to end.

engine: pre-made (N, 3, S, S) tensors straight into Backend.infer.
e2e:    encoded image bytes (JPEG/PNG in memory) through Predictor: decode + preprocess on a thread pool,
        overlapped with inference of the previous batch, then softmax/top-k.
overhead = 1 - e2e throughput / engine throughput: what decoding and preprocessing cost on top.

Memory: ru_maxrss is a per-process high-water mark that never goes down, so each result records the
current RSS before/after loading and after running (deltas), next to the monotonic process peak.
"""

from __future__ import annotations

import gc
import io
import itertools
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeft import __version__
from edgeft.errors import EdgeftError
from edgeft.manifest import BundleManifest, PreprocessSpec, write_json_atomic
from edgeft.runtime.backends import (
    Backend,
    Target,
    create_backend,
    default_options,
    physical_cores,
    plan_targets,
    verify_artifact,
)
from edgeft.runtime.evalset import from_splits, resolve_target
from edgeft.runtime.predictor import Predictor, prepare_item
from edgeft.runtime.preprocess import load_image, preprocess


def current_rss_mb() -> float | None:
    """Resident set size now (not the peak), via psutil or /proc; None where neither exists."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """The process's RSS high-water mark so far (monotonic: it includes every earlier backend)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def parse_batches(text: str | Sequence[int]) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    if not isinstance(text, str):
        values = [int(v) for v in text]
    else:
        try:
            values = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            values = []
    if not values or any(v < 1 for v in values):
        raise EdgeftError(f"invalid batch sizes {text!r}", fix="pass positive integers, e.g. --batch 1,8,32")
    return sorted(set(values))


def synthetic_frames(n: int, size: tuple[int, int] = (640, 480), quality: int = 90, seed: int = 0) -> list[bytes]:
    """Deterministic camera-like JPEG frames: smooth colour fields plus texture and sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for _ in range(n):
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] = 128 + 90 * np.sin(xx * fx + ph) * np.cos(yy * fy)
        img += rng.normal(0, 8, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=quality)
        frames.append(buf.getvalue())
    return frames


def encoded_images(run_dir: Path | None, classes: Sequence[str], n: int) -> tuple[list[bytes], str]:
    """Up to n encoded images in memory: the run's test images when available, else synthetic frames."""
    if run_dir is not None and (run_dir / "splits.json").is_file():
        try:
            ev = from_splits(run_dir, classes)
        except EdgeftError:
            ev = None
        if ev is not None:
            blobs = []
            for p in ev.paths[:n]:
                try:
                    data = p.read_bytes()
                    load_image(data)
                    blobs.append(data)
                except (OSError, EdgeftError):
                    continue
            if blobs:
                return blobs, f"{len(blobs)} test images of {run_dir}"
    return synthetic_frames(n), f"{n} synthetic 640x480 JPEG frames"


@dataclass
class Timing:
    """Throughput (images/s) and per-batch latency percentiles (ms) of one measured loop."""

    throughput: float
    p50_ms: float
    p99_ms: float
    iterations: int
    seconds: float


def _timing(latencies: Sequence[float], images: int, wall: float) -> Timing:
    lat = np.asarray(latencies) * 1000.0
    return Timing(
        throughput=images / wall if wall > 0 else 0.0,
        p50_ms=float(np.percentile(lat, 50)) if lat.size else 0.0,
        p99_ms=float(np.percentile(lat, 99)) if lat.size else 0.0,
        iterations=int(lat.size),
        seconds=wall,
    )


def time_loop(fn: Callable[[], Any], seconds: float, warmup: int, min_iters: int) -> tuple[list[float], float]:
    """Run fn (one batch) warmup times, then until `seconds` passed and min_iters ran: (latencies s, wall s)."""
    for _ in range(warmup):
        fn()
    lat = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
        if len(lat) >= min_iters and time.perf_counter() - start >= seconds:
            break
    return lat, time.perf_counter() - start


def time_stream(predictor: Predictor, blobs: list[bytes], seconds: float, min_images: int) -> tuple[int, float]:
    """Stream an endless feed of encoded images through Predictor.predict_iter: (images done, wall s).

    The feed stops at a batch boundary once `seconds` have passed (and at least min_images were fed).
    """
    batch = predictor.batch_size
    predictor.predict(blobs[:batch])  # warm the decode threads
    start = time.perf_counter()
    deadline = start + seconds

    def feed() -> Iterator[bytes]:
        for k, blob in enumerate(itertools.cycle(blobs)):
            if k >= min_images and k % batch == 0 and time.perf_counter() >= deadline:
                return
            yield blob

    n = 0
    for pred in predictor.predict_iter(feed()):
        if pred.error:
            raise EdgeftError(f"benchmark image failed to decode: {pred.error}", fix="report a bug")
        n += 1
    return n, time.perf_counter() - start


@dataclass
class BenchResult:
    """One backend x artifact x batch size."""

    backend: str
    artifact: str
    precision: str
    describe: str
    batch: int
    options: dict
    engine: dict  # Timing of Backend.infer on ready tensors
    e2e: dict  # streaming throughput from encoded bytes (pipelined decode/preprocess)
    e2e_request: dict  # Timing of one Predictor.predict call of `batch` encoded images (request latency)
    pipeline_overhead: float
    model_mb: float
    load_seconds: float
    rss_mb_before_load: float | None
    rss_mb_after_load: float | None
    rss_mb_after_run: float | None
    rss_delta_load_mb: float | None
    peak_rss_mb_process: float


def preprocess_cost_ms(blobs: Sequence[bytes], spec: PreprocessSpec, n: int = 16) -> float:
    """CPU milliseconds to decode + preprocess one image (single thread): what e2e adds on top of the engine."""
    sample = list(itertools.islice(itertools.cycle(blobs), max(n, 1)))
    t0 = time.thread_time()
    for blob in sample:
        prepare_item(blob, spec)
    return (time.thread_time() - t0) * 1000.0 / len(sample)


@dataclass
class BenchReport:
    """Everything bench.json holds."""

    bundle_dir: str
    images: str
    settings: dict
    machine: dict
    preprocess_cpu_ms_per_image: float = 0.0
    results: list[BenchResult] = field(default_factory=list)
    skipped_backends: dict[str, str] = field(default_factory=dict)
    failed_backends: dict[str, str] = field(default_factory=dict)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d

    def best(self, batch: int, precision: str | None = None) -> BenchResult | None:
        """The fastest engine throughput at a batch size (optionally of one precision)."""
        rows = [r for r in self.results if r.batch == batch and (precision is None or r.precision == precision)]
        return max(rows, key=lambda r: r.engine["throughput"], default=None)


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken: benchmarks are only comparable on the same machine."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "edgeft": __version__,
    }


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def bench_target(
    bundle_dir: Path,
    bundle: BundleManifest,
    target: Target,
    batches: Sequence[int],
    tensors: np.ndarray,
    blobs: list[bytes],
    seconds: float,
    warmup: int,
    min_iters: int,
    workers: int | None,
    backend_options: dict[str, Any],
    advance: Callable[[], None] | None = None,
    rounds: int = 3,
) -> list[BenchResult]:
    """All batch sizes for one backend, loaded per batch size with the options Predictor would use for it.

    Measures the engine alone, the e2e stream and e2e single requests.
    """
    verify_artifact(bundle, bundle_dir, target.artifact)
    results = []
    for b in batches:
        options = {**default_options(b), **backend_options}
        gc.collect()
        rss0 = current_rss_mb()
        t0 = time.perf_counter()
        backend: Backend = create_backend(bundle_dir, bundle, target.spec, target.artifact, **options).load()
        load_s = time.perf_counter() - t0
        rss1 = current_rss_mb()
        with Predictor.from_backend(backend, batch_size=b, workers=workers) as predictor:
            x = np.ascontiguousarray(np.resize(tensors, (b, *tensors.shape[1:])))
            # engine and e2e alternate in short rounds, so a noisy neighbour hurts both alike
            eng_lat, eng_wall, e2e_n, e2e_wall = [], 0.0, 0, 0.0
            for r in range(rounds):
                lat, wall = time_loop(
                    lambda x=x, be=backend: be.infer(x),
                    seconds / rounds,
                    warmup if r == 0 else 0,
                    -(-min_iters // rounds),
                )
                eng_lat, eng_wall = eng_lat + lat, eng_wall + wall
                n, wall = time_stream(predictor, blobs, seconds / rounds, -(-min_iters * b // rounds))
                e2e_n, e2e_wall = e2e_n + n, e2e_wall + wall
            engine = _timing(eng_lat, b * len(eng_lat), eng_wall)
            e2e = {"throughput": e2e_n / e2e_wall, "images": e2e_n, "seconds": e2e_wall}
            request = [blobs[i % len(blobs)] for i in range(b)]
            req_lat, req_wall = time_loop(lambda r=request, p=predictor: p.predict(r), seconds / 2, 1, min_iters)
            e2e_req = _timing(req_lat, b * len(req_lat), req_wall)
            results.append(
                BenchResult(
                    backend=target.spec,
                    artifact=target.artifact.name,
                    precision=target.precision,
                    describe=backend.describe(),
                    batch=b,
                    options={k: v for k, v in options.items() if k in backend.used_options()},
                    engine=asdict(engine),
                    e2e=e2e,
                    e2e_request=asdict(e2e_req),
                    pipeline_overhead=1.0 - e2e["throughput"] / engine.throughput if engine.throughput else 0.0,
                    model_mb=backend.model_bytes() / 2**20,
                    load_seconds=load_s,
                    rss_mb_before_load=rss0,
                    rss_mb_after_load=rss1,
                    rss_mb_after_run=current_rss_mb(),
                    rss_delta_load_mb=_sub(rss1, rss0),
                    peak_rss_mb_process=peak_rss_mb(),
                )
            )
        if advance:
            advance()
    return results


def run_bench(
    bundle: Path,
    batches: Sequence[int] | str = (1, 8, 32),
    backends: list[str] | None = None,
    seconds: float = 2.0,
    out: Path | None = None,
    *,
    warmup: int = 3,
    min_iters: int = 3,
    n_images: int = 64,
    workers: int | None = None,
    include_torch: bool = False,
    backend_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> BenchReport:
    """Measure every runnable backend x precision x batch size of a bundle (or a run's bundle); write bench.json.

    out: the bench.json path (default: <bundle>/bench.json).
    """
    from edgeft.runtime.parity import progress_bar

    batches = parse_batches(batches)
    if seconds <= 0:
        raise EdgeftError(f"--seconds must be > 0, got {seconds}", fix="e.g. --seconds 2")
    bundle_dir, run_dir = resolve_target(bundle)
    manifest = BundleManifest.load(bundle_dir)
    spec: PreprocessSpec = manifest.preprocess_spec
    targets, skipped = plan_targets(manifest, bundle_dir, backends)
    if include_torch:
        extra, why = plan_targets(manifest, bundle_dir, ["torch"])
        targets += [t for t in extra if t.key not in {u.key for u in targets}]
        skipped.update(why)
    if not targets:
        raise EdgeftError(
            f"no backend can run this bundle here (selected: {backends or 'all'}; skipped: {skipped})",
            path=bundle_dir,
            fix="install onnxruntime/openvino, or check --backends",
        )
    blobs, images = encoded_images(run_dir, manifest.classes, n_images)
    tensors = np.stack([prepare_item(b, spec) for b in blobs[: max(batches)]])
    if tensors.shape[0] < max(batches):
        tensors = np.stack([preprocess(load_image(blobs[i % len(blobs)]), spec) for i in range(max(batches))])
    report = BenchReport(
        bundle_dir=str(bundle_dir),
        images=images,
        settings={
            "batches": batches,
            "seconds": seconds,
            "warmup": warmup,
            "min_iters": min_iters,
            "decode_workers": workers,
            "backend_options": backend_options or {},
            "input_size": spec.input_size,
        },
        machine=machine_info(),
        preprocess_cpu_ms_per_image=preprocess_cost_ms(blobs, spec),
        skipped_backends=skipped,
    )
    with progress_bar(progress) as prog:
        task = prog.add_task("bench", total=len(targets) * len(batches)) if prog else None
        for t in targets:
            if prog:
                prog.update(task, description=f"bench {t.key}")
            try:
                report.results += bench_target(
                    bundle_dir,
                    manifest,
                    t,
                    batches,
                    tensors,
                    blobs,
                    seconds,
                    warmup,
                    min_iters,
                    workers,
                    backend_options or {},
                    advance=(lambda: prog.advance(task, 1)) if prog else None,
                )
            except EdgeftError as exc:
                report.failed_backends[t.key] = exc.message
    report.path = str(Path(out) if out is not None else bundle_dir / "bench.json")
    write_json_atomic(report.path, report.to_dict())
    return report


def render_bench(report: BenchReport, console: Any = None) -> None:
    """The benchmark table on the terminal (rich)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"bench {report.bundle_dir} ({report.images})", box=box.SIMPLE_HEAD)
    table.add_column("backend/artifact", overflow="fold", min_width=18)
    for col in (
        "batch",
        "engine\nimg/s",
        "engine ms\np50/p99",
        "e2e\nimg/s",
        "request\np50 ms",
        "over-\nhead",
        "MB",
        "ΔRSS\nMB",
    ):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report.results:
        table.add_row(
            f"{r.backend}/{r.artifact}",
            str(r.batch),
            f"{r.engine['throughput']:.1f}",
            f"{r.engine['p50_ms']:.1f}/{r.engine['p99_ms']:.1f}",
            f"{r.e2e['throughput']:.1f}",
            f"{r.e2e_request['p50_ms']:.1f}",
            f"{100 * r.pipeline_overhead:.0f}%",
            f"{r.model_mb:.1f}",
            "—" if r.rss_delta_load_mb is None else f"{r.rss_delta_load_mb:.0f}",
        )
    console.print(table)
    cores = report.machine.get("physical_cores") or 1
    cost = report.preprocess_cpu_ms_per_image
    if cost > 0:
        console.print(
            f"decode + preprocess: {cost:.2f} CPU ms per image -> at most {1000.0 * cores / cost:.0f} img/s on "
            f"{cores} core(s) before any inference; e2e shares those cores with the engine",
            highlight=False,
        )
    for key, why in report.skipped_backends.items():
        console.print(f"[yellow]skipped[/] {key}: {why}", highlight=False)
    for key, why in report.failed_backends.items():
        console.print(f"[red]failed[/] {key}: {why}", highlight=False)
    console.print(f"bench.json: {report.path}", highlight=False)
