"""Benchmark every runnable backend x artifact x batch size of a bundle: engine alone and end to end.

engine:  ready (N, 3, S, S) tensors straight into Engine.infer.
e2e:     encoded images (JPEG/PNG bytes in memory) through the Predictor: decode + preprocess on its thread
         pool, overlapped with inference of the previous batch, then softmax/top-k; `e2e_request` times one
         `predict` call of a batch (a request's latency).
Each result carries the gate verdict bundle.json records for its artifact, so the accuracy/agreement column
of the table is THE gate's, never a recomputation. bench.json is `edgeft.core.reports.BenchReport`.

Memory: ru_maxrss is a per-process high-water mark that never goes down, so each result records the
current RSS before/after loading and after running, next to the monotonic process peak.
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
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeft import __version__
from edgeft.check.plots import plot_accuracy_latency
from edgeft.core.errors import EdgeftError
from edgeft.core.files import check_out_file
from edgeft.core.locate import locate
from edgeft.core.manifests import BundleManifest
from edgeft.core.preprocess import PreprocessSpec, preprocess_many
from edgeft.core.progress import Reporter, or_silent
from edgeft.core.reports import BenchReport, BenchResult, ExportReport, Timing
from edgeft.data.evalsets import run_split
from edgeft.engines.base import engine_class, parse_spec, physical_cores
from edgeft.engines.select import Target, open_artifact, plan_targets, verify_artifact
from edgeft.serve.config import options_error
from edgeft.serve.predictor import Predictor, prepare_item

CHART = "accuracy_latency.png"


def parse_batches(text: str | Sequence[int]) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (sorted, unique); anything else is a clear error."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v] if isinstance(text, str) else list(text)
    except ValueError:
        values = []
    if not values or any(not isinstance(v, int) or v < 1 for v in values):
        raise EdgeftError(f"invalid batch sizes {text!r}", fix="pass positive integers, e.g. --batch 1,8,32")
    return sorted(set(values))


class BenchSettings(BaseModel):
    """What `edgeft bench` measures and how long; recorded as bench.json's `settings`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batches: list[int] = Field(default_factory=lambda: [1, 8, 32], json_schema_extra={"flag": "--batch"})
    backends: list[str] | None = Field(None, json_schema_extra={"flag": "--backends"})
    seconds: float = Field(2.0, gt=0.0, json_schema_extra={"flag": "--seconds"})
    warmup: int = Field(3, ge=0, json_schema_extra={"flag": "--warmup"})
    min_iters: int = Field(3, ge=1)
    rounds: int = Field(3, ge=1)
    n_images: int = Field(64, ge=1)
    workers: int | None = Field(None, ge=1, json_schema_extra={"flag": "--workers"})
    include_torch: bool = False
    engine_options: dict[str, Any] = Field(default_factory=dict)
    input: Literal["files", "frames"] = Field("files", json_schema_extra={"flag": "--input"})
    fast_preprocess: bool = Field(False, json_schema_extra={"flag": "--fast-preprocess"})

    _batches = field_validator("batches", mode="before")(parse_batches)

    @classmethod
    def build(cls, **values: Any) -> BenchSettings:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise options_error(cls, exc) from None


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size now (not the peak) of a process (default: this one), via psutil or /proc; None
    where neither can tell (also for a process that has gone)."""
    try:
        import psutil

        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None
    except ImportError:
        pass
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def current_rss_mb() -> float | None:
    """This process's resident set size now, in MiB (see `rss_bytes`)."""
    rss = rss_bytes()
    return None if rss is None else rss / 2**20


def peak_rss_mb() -> float:
    """The process's RSS high-water mark so far (monotonic: it includes every earlier backend)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


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
            paths = run_split(run_dir, classes).paths[:n]
            blobs = [p.read_bytes() for p in paths]
        except (EdgeftError, OSError):
            blobs = []
        if blobs:
            return blobs, f"{len(blobs)} test images of {run_dir}"
    return synthetic_frames(n), f"{n} synthetic 640x480 JPEG frames"


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
    while len(lat) < min_iters or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    return lat, time.perf_counter() - start


def time_stream(predictor: Predictor, blobs: list[Any], seconds: float, min_images: int) -> tuple[int, float]:
    """Stream an endless feed of encoded images (or decoded frames) through Predictor.predict_iter: (images, wall s).

    The feed stops at a batch boundary once `seconds` have passed (and at least min_images were fed).
    """
    batch = predictor.batch_size
    predictor.predict(blobs[:batch])  # warm the decode threads
    start = time.perf_counter()
    deadline = start + seconds

    def feed() -> Iterator[Any]:
        for k, blob in enumerate(itertools.cycle(blobs)):
            if k >= min_images and k % batch == 0 and time.perf_counter() >= deadline:
                return
            yield blob

    n = 0
    for pred in predictor.predict_iter(feed()):
        if not pred.ok:
            raise EdgeftError(f"benchmark image {pred.source} failed to decode: {pred.error}", fix="report a bug")
        n += 1
    return n, time.perf_counter() - start


def preprocess_cost_ms(
    items: Sequence[Any], spec: PreprocessSpec, n: int = 16, fast: bool = False, raw: bool = False
) -> float:
    """CPU milliseconds to decode + preprocess one image or frame (one thread): what e2e adds to the engine.
    raw: up to the uint8 image an image-input engine takes."""
    sample = list(itertools.islice(itertools.cycle(items), max(n, 1)))
    prepare_item(sample[0], spec, fast=fast, raw=raw)  # first-call costs (tables, imports) are not per image
    t0 = time.thread_time()
    for item in sample:
        prepare_item(item, spec, fast=fast, raw=raw)
    return (time.thread_time() - t0) * 1000.0 / len(sample)


def decoded_frames(n: int) -> tuple[list[np.ndarray], str]:
    """n decoded 640x480 RGB frames, as a camera hands them to the stream loop."""
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in synthetic_frames(n)], (
        f"{n} decoded 640x480 frames"
    )


def bench_inputs(s: BenchSettings, run_dir: Path | None, bundle: BundleManifest) -> tuple[np.ndarray, list[Any], str]:
    """(engine tensors, e2e inputs, description): encoded files, or decoded frames with --input frames."""
    if s.input == "frames":
        frames, images = decoded_frames(s.n_images)
        return np.stack([prepare_item(f, bundle.preprocess) for f in frames]), list(frames), images
    blobs, images = encoded_images(run_dir, bundle.classes, s.n_images)
    tensors, ok, _ = preprocess_many(blobs, bundle.preprocess, workers=s.workers)
    blobs = [blobs[i] for i in ok]
    if not blobs:
        raise EdgeftError(f"none of the {images} could be decoded", path=run_dir, fix="check the run's test images")
    return tensors, blobs, images


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


def engine_options(spec: str, batch: int, wanted: dict[str, Any]) -> dict[str, Any]:
    """The options the Predictor would use at this batch size, plus the user's, kept to what this engine takes."""
    cls = engine_class(parse_spec(spec)[0])
    return {k: v for k, v in {**cls.default_options(batch), **wanted}.items() if k in cls.option_names}


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def bench_batch(
    bundle_dir: Path,
    bundle: BundleManifest,
    target: Target,
    batch: int,
    data: tuple[np.ndarray, list[Any]],
    s: BenchSettings,
) -> BenchResult:
    """One backend at one batch size: engine loop, e2e stream and e2e requests, alternating in short rounds."""
    tensors, blobs = data
    options = engine_options(target.spec, batch, s.engine_options)
    gc.collect()
    rss0, t0 = current_rss_mb(), time.perf_counter()
    engine = open_artifact(
        bundle_dir, bundle, target.spec, target.artifact, batch, image_input=s.fast_preprocess, **options
    ).load()
    load_s, rss1 = time.perf_counter() - t0, current_rss_mb()
    with Predictor.from_engine(
        engine, bundle, batch_size=batch, workers=s.workers, fast_preprocess=s.fast_preprocess
    ) as predictor:
        if predictor.takes_images:  # the engine's own input: the uint8 images, normalised in its graph
            tensors = np.stack([predictor.prepare(b) for b in blobs[:batch]])
        x = np.ascontiguousarray(np.resize(tensors, (batch, *tensors.shape[1:])))
        eng_lat: list[float] = []
        eng_wall, e2e_n, e2e_wall = 0.0, 0, 0.0
        for r in range(s.rounds):  # alternating, so a noisy neighbour hurts engine and e2e alike
            per = s.seconds / s.rounds
            lat, wall = time_loop(lambda: engine.infer(x), per, s.warmup if r == 0 else 0, -(-s.min_iters // s.rounds))
            eng_lat, eng_wall = eng_lat + lat, eng_wall + wall
            n, wall = time_stream(predictor, blobs, per, -(-s.min_iters * batch // s.rounds))
            e2e_n, e2e_wall = e2e_n + n, e2e_wall + wall
        request = [blobs[i % len(blobs)] for i in range(batch)]
        req_lat, req_wall = time_loop(lambda: predictor.predict(request), s.seconds / 2, 1, s.min_iters)
        engine_t = _timing(eng_lat, batch * len(eng_lat), eng_wall)
        e2e = {"throughput": e2e_n / e2e_wall, "images": float(e2e_n), "seconds": e2e_wall}
        return BenchResult(
            backend=target.spec,
            artifact=target.artifact.name,
            precision=target.precision,
            describe=engine.describe(),
            batch=batch,
            options=engine.used_options(),
            image_input=predictor.takes_images,
            engine=engine_t,
            e2e=e2e,
            e2e_request=_timing(req_lat, batch * len(req_lat), req_wall),
            pipeline_overhead=1.0 - e2e["throughput"] / engine_t.throughput if engine_t.throughput else 0.0,
            model_mb=engine.model_bytes() / 2**20,
            load_seconds=load_s,
            rss_mb_before_load=rss0,
            rss_mb_after_load=rss1,
            rss_mb_after_run=current_rss_mb(),
            rss_delta_load_mb=_sub(rss1, rss0),
            peak_rss_mb_process=peak_rss_mb(),
            gate=target.artifact.gate,
        )


def _targets(bundle: BundleManifest, bundle_dir: Path, s: BenchSettings) -> tuple[list[Target], dict[str, str]]:
    targets, skipped = plan_targets(bundle, bundle_dir, s.backends)
    if s.include_torch:
        extra, why = plan_targets(bundle, bundle_dir, ["torch"])
        targets += [t for t in extra if t.key not in {u.key for u in targets}]
        skipped.update(why)
    if not targets:
        raise EdgeftError(
            f"no backend can run this bundle here (selected: {s.backends or 'all'}; skipped: {skipped})",
            path=bundle_dir,
            fix="install onnxruntime/openvino, or check --backends",
        )
    return targets, skipped


def run_bench(
    target: str | Path | None = None,
    settings: BenchSettings | None = None,
    out: str | Path | None = None,
    *,
    reporter: Reporter | None = None,
) -> BenchReport:
    """Measure every runnable backend x artifact x batch size of a bundle (or a run's bundle); write bench.json.

    target: a bundle dir, a run dir or None (the latest run). out: the bench.json path (default BUNDLE/bench.json).
    A backend that fails to load or run is recorded in `failed_backends`, not raised.
    """
    s = settings or BenchSettings()
    rep = or_silent(reporter)
    path = chart = None
    if out is not None:
        path = Path(out)
        check_out_file(path, "--out", _earlier_bench)
        chart = path.with_name(CHART)  # an earlier bench's chart when the bench.json beside it is one
        check_out_file(chart, f"the chart beside --out ({CHART})", lambda _p: path.exists())
    where = locate(target, need_bundle=True)
    bundle_dir = where.bundle_dir
    assert bundle_dir is not None
    bundle = BundleManifest.load(bundle_dir)
    targets, skipped = _targets(bundle, bundle_dir, s)
    tensors, blobs, images = bench_inputs(s, where.run_dir, bundle)
    report = BenchReport(
        bundle_dir=str(bundle_dir),
        images=images,
        settings=s.model_dump(mode="json"),
        machine=machine_info(),
        preprocess_cpu_ms_per_image=preprocess_cost_ms(blobs, bundle.preprocess, fast=s.fast_preprocess),
        skipped_backends=skipped,
    )
    rep.task("bench", len(targets) * len(s.batches))
    for t in targets:
        try:
            verify_artifact(bundle, bundle_dir, t.artifact)
            for b in s.batches:
                report.results.append(bench_batch(bundle_dir, bundle, t, b, (tensors, blobs), s))
                rep.advance()
        except EdgeftError as exc:
            report.failed_backends[t.key] = exc.message
            rep.note(f"{t.key} failed: {exc.message}")
    if any(r.image_input for r in report.results):
        report.image_preprocess_cpu_ms_per_image = preprocess_cost_ms(blobs, bundle.preprocess, fast=True, raw=True)
    path = path or bundle_dir / "bench.json"
    report.write(path)
    export = bundle_dir / "export_report.json"
    plot_accuracy_latency(report, ExportReport.load(export) if export.is_file() else None, chart or bundle_dir / CHART)
    return report


def _earlier_bench(path: Path) -> bool:
    """True for a bench.json an earlier `edgeft bench` wrote (replacing it is what --out asks)."""
    try:
        BenchReport.load(path)
    except EdgeftError:
        return False
    return True
