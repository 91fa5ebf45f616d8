"""`edgeft predict`, `edgeft serve` and `edgeft bench`: run a bundle on images, a camera, a stream or HTTP, or time it.

Each command parses its options into one settings object (`ServeConfig`, `BenchSettings`), resolves the
BUNDLE/RUN argument with `core.locate` (the latest run when omitted, and says so), calls one library
function and prints. Anything built from data is escaped before it reaches rich markup.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from edgeft.cli import console
from edgeft.core.errors import EXIT_INTERRUPTED, EdgeftError
from edgeft.core.locate import is_bundle_dir, is_run_dir, locate

# Options shared by the three commands: defined once.
TARGET = typer.Argument(None, help="A bundle dir, a run dir (its bundle is looked up), or nothing: the latest run.")
BACKEND = typer.Option(
    "auto", "--backend", help="auto, onnxruntime[:cpu|cuda|tensorrt], openvino[:CPU|GPU|NPU|AUTO], tensorrt, torch."
)
PRECISION = typer.Option("fp32", "--precision", help="fp32, fp16, bf16, int8, or auto (fastest passing artifact).")
BATCH_SIZE = typer.Option(8, "--batch-size", help="Images per model call.")
TOPK = typer.Option(5, "--topk", help="Classes listed per prediction.")
UNKNOWN_BELOW = typer.Option(
    None, "--unknown-below", help="Answer 'unknown' below this top-1 probability (default: the bundle's; 0: off)."
)
WORKERS = typer.Option(None, "--workers", help="Decode/preprocess threads (default: one per core, at most 4).")


def bundle_dir_of(target: Path | None) -> Path:
    """The bundle a command runs; says on stderr which one when it was picked automatically."""
    where = locate(target, need_bundle=True)
    assert where.bundle_dir is not None
    if where.chosen:
        console.labelled("Bundle", f"{where.bundle_dir} (of the latest run under runs/)", stderr=True)
    return where.bundle_dir


@contextlib.contextmanager
def serve_logging() -> Iterator[None]:
    """Status lines, reconnects and parity alerts go to stderr while the command runs; stdout stays clean JSONL."""
    from rich.logging import RichHandler

    logger = logging.getLogger("edgeft.serve")
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=console.err(), show_path=False, markup=False, rich_tracebacks=False)
    else:  # journald, docker logs, files: one plain line per record, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """systemd/docker stop with SIGTERM: treat it like Ctrl-C so outputs are flushed and closed."""

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- predict -------------------------------------------------------------------------------------
def predict(
    paths: list[Path] = typer.Argument(..., help="[BUNDLE|RUN] IMAGE...: images (unreadable ones get an error line)."),
    backend: str = BACKEND,
    precision: str = PRECISION,
    batch_size: int = BATCH_SIZE,
    topk: int = TOPK,
    workers: int = WORKERS,
    unknown_below: float = UNKNOWN_BELOW,
    logits: bool = typer.Option(False, "--logits", help="Include raw logits in each line."),
) -> None:
    """Classify images and print one JSON Prediction per line (the engine used goes to stderr)."""
    from edgeft.serve.config import ServeConfig
    from edgeft.serve.predictor import Predictor

    first = paths[0]
    target = first if first.is_dir() and (is_bundle_dir(first) or is_run_dir(first)) else None
    images = paths[1:] if target is not None else paths
    if not images:
        raise EdgeftError("no images given", fix="edgeft predict [BUNDLE|RUN] IMAGE...")
    config = ServeConfig.build(
        model={
            "backend": backend,
            "precision": precision,
            "batch_size": batch_size,
            "topk": topk,
            "workers": workers,
            "unknown_below": unknown_below,
        }
    )
    with Predictor.from_options(bundle_dir_of(target), config.model) as predictor:
        console.labelled("engine", predictor.describe(), stderr=True)
        for pred in predictor.predict_iter(images):
            typer.echo(pred.to_json(with_logits=logits))


# -- serve ---------------------------------------------------------------------------------------
def input_mode(camera: int | None, source: str | None, http: str | None, stream_only: dict[str, Any]) -> str:
    """Exactly one of --camera/--source/--http, and no stream-only option with --http."""
    given = [name for name, v in (("--camera", camera), ("--source", source), ("--http", http)) if v is not None]
    if len(given) != 1:
        raise EdgeftError(
            f"give exactly one input mode; got {', '.join(given) if given else 'none'}",
            fix="use one of --camera INDEX, --source PATH|URL|GLOB or --http HOST:PORT",
        )
    mode = given[0].lstrip("-")
    misplaced = [flag for flag, v in stream_only.items() if v is not None]
    if mode == "http" and misplaced:
        raise EdgeftError(
            f"{', '.join(misplaced)} only apply to --camera/--source, not to --http",
            fix="drop them, or serve a camera/source instead",
        )
    return mode


def _stream_summary(report: Any) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    console.say(
        f"processed {report.frames} frames in {report.elapsed_s:.1f} s ({report.fps or 0.0:.1f} fps; latency p50 "
        f"{ms(report.p50_ms)}, p99 {ms(report.p99_ms)}; dropped {report.dropped}; reconnects {report.reconnects}; "
        f"errors {report.errors}; stopped by {report.stopped_by})",
        stderr=True,
    )
    if report.parity is not None:
        p = report.parity
        console.say(
            f"parity vs {p.reference}: {p.short()}; checked {p.checked}, disagreements {p.disagreements}", stderr=True
        )
    console.outputs("predictions", f"{report.jsonl} ({report.lines} lines)")
    if report.saved is not None:
        console.outputs("annotated", report.saved)


def _serve_http(bundle_dir: Path, http: str, config: Any) -> None:
    from edgeft.serve.http import create_app
    from edgeft.serve.server import parse_host_port, serve_http

    host, port = parse_host_port(http)
    app = create_app(bundle_dir, config)
    try:
        serve_http(app, host, port)
    finally:
        metrics = app.state.serve.metrics
        console.say(f"stopped: {metrics.status_line()}", stderr=True)


def serve(
    target: Path = TARGET,
    camera: int = typer.Option(None, "--camera", help="Camera index (live: newest frame, reconnects)."),
    source: str = typer.Option(
        None, "--source", help="Video file, rtsp:// or http(s):// MJPEG URL, image folder or quoted glob."
    ),
    http: str = typer.Option(None, "--http", help="Serve an HTTP API on HOST:PORT (default host 127.0.0.1)."),
    backend: str = BACKEND,
    precision: str = PRECISION,
    batch_size: int = BATCH_SIZE,
    topk: int = TOPK,
    unknown_below: float = UNKNOWN_BELOW,
    jsonl: str = typer.Option(None, "--jsonl", help="Write one JSON line per frame here (default: stdout)."),
    save: Path = typer.Option(None, "--save", help="Write an annotated video / image folder here."),
    max_frames: int = typer.Option(None, "--max-frames", help="Stop after N frames."),
    reconnect: bool = typer.Option(
        None, "--reconnect/--no-reconnect", help="Reopen a lost camera/stream with backoff (default: on for live)."
    ),
    max_retries: int = typer.Option(5, "--max-retries", help="Reconnect attempts before giving up."),
    parity_sample: float = typer.Option(
        0.0, "--parity-sample", help="Share of inputs re-checked against the FP32 reference (e.g. 0.01)."
    ),
    parity_alert: float = typer.Option(
        0.98, "--parity-alert", help="Alert when the gate's agreement floor is missed (INT8/FP16)."
    ),
    status_every: float = typer.Option(5.0, "--status-every", help="Seconds between status lines (0: off)."),
    max_queue: int = typer.Option(64, "--max-queue", help="HTTP: images waiting for the model before 503."),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", help="HTTP: request body limit (413 above)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="HTTP: how long a batch waits to fill."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parity sampler."),
) -> None:
    """Classify a camera, stream, video or image folder live, or serve POST /predict over HTTP."""
    from edgeft.serve.config import ServeConfig
    from edgeft.serve.stream import serve_stream

    stream_only = {"--jsonl": jsonl, "--save": save, "--max-frames": max_frames, "--reconnect": reconnect}
    mode = input_mode(camera, source, http, stream_only)
    config = ServeConfig.build(
        model={
            "backend": backend,
            "precision": precision,
            "batch_size": batch_size,
            "topk": topk,
            "unknown_below": unknown_below,
        },
        parity={"sample": parity_sample, "alert_below": parity_alert, "seed": seed},
        stream={
            "jsonl": jsonl,
            "save": save,
            "max_frames": max_frames,
            "reconnect": reconnect,
            "max_retries": max_retries,
        },
        http={"max_queue": max_queue, "max_body_mb": max_body_mb, "max_wait_ms": max_wait_ms},
        status_every_s=status_every,
    )
    bundle_dir = bundle_dir_of(target)
    with serve_logging():
        if mode == "http":
            _serve_http(bundle_dir, http, config)
            return
        with _sigterm_as_interrupt():
            report = serve_stream(bundle_dir, config, camera=camera, source=source)
    _stream_summary(report)
    if report.stopped_by == "interrupt":
        raise typer.Exit(EXIT_INTERRUPTED)


# -- bench ---------------------------------------------------------------------------------------
def _gate_cell(result: Any) -> str:
    g = result.gate
    if g is None:
        return "—"
    agreement = "" if g.agreement is None else f" {g.agreement:.3f}"
    return f"[green]pass{agreement}[/]" if g.passed else f"[red]{escape(g.verdict.upper())}{agreement}[/]"


def render_bench(report: Any, path: Path) -> None:
    """The benchmark table: speed next to the gate verdict export recorded (p99s and memory: bench.json)."""
    from rich import box
    from rich.table import Table

    title = escape(f"bench {report.bundle_dir} ({report.images})")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("backend/artifact", overflow="fold", min_width=16)
    table.add_column("gate", no_wrap=True)
    for col in ("batch", "engine\nimg/s", "engine\np50 ms", "e2e\nimg/s", "request\np50 ms", "over-\nhead", "MB"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report.results:
        table.add_row(
            escape(f"{r.backend}/{r.artifact}"),
            _gate_cell(r),
            str(r.batch),
            f"{r.engine.throughput:.0f}",
            f"{r.engine.p50_ms:.1f}",
            f"{r.e2e['throughput']:.0f}",
            f"{r.e2e_request.p50_ms:.1f}",
            f"{100 * r.pipeline_overhead:.0f}%",
            f"{r.model_mb:.1f}",
        )
    console.out().print(table)
    cores, cost = report.machine.get("physical_cores") or 1, report.preprocess_cpu_ms_per_image
    if cost > 0:
        console.say(
            f"decode + preprocess: {cost:.2f} CPU ms per image -> at most {1000.0 * cores / cost:.0f} img/s on "
            f"{cores} core(s) before any inference; e2e shares those cores with the engine"
        )
    for key, why in report.skipped_backends.items():
        console.say(f"skipped {key}: {why}", "yellow")
    for key, why in report.failed_backends.items():
        console.say(f"failed {key}: {why}", "red")
    console.outputs("bench.json", path)


def bench(
    target: Path = TARGET,
    batch: str = typer.Option("1,8,32", "--batch", help="Comma list of batch sizes."),
    backends: str = typer.Option(
        None, "--backends", help="Comma list of backends/artifacts/precisions, e.g. 'openvino,onnx-int8'."
    ),
    seconds: float = typer.Option(2.0, "--seconds", help="Measured seconds per backend x batch (and per mode)."),
    out: Path = typer.Option(None, "--out", help="bench.json path (default: BUNDLE/bench.json)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed runs before measuring."),
    workers: int = WORKERS,
    hint: str = typer.Option(
        None, "--hint", help="OpenVINO PERFORMANCE_HINT: LATENCY or THROUGHPUT (default: by batch size)."
    ),
    torch_baseline: bool = typer.Option(False, "--torch", help="Also measure the run's torch FP32 model."),
) -> None:
    """Throughput, latency, pipeline overhead, size and memory of every backend x precision x batch size."""
    from edgeft.cli.check import split_list
    from edgeft.serve.bench import BenchSettings, run_bench

    settings = BenchSettings.build(
        batches=batch,
        backends=split_list(backends),
        seconds=seconds,
        warmup=warmup,
        workers=workers,
        include_torch=torch_baseline,
        engine_options={"hint": hint} if hint else {},
    )
    bundle_dir = bundle_dir_of(target)
    with console.reporting() as rep:
        report = run_bench(bundle_dir, settings, out, reporter=rep)
    render_bench(report, Path(out) if out is not None else bundle_dir / "bench.json")


def register(app: typer.Typer) -> None:
    """Add predict, serve and bench to the edgeft CLI."""
    app.command("predict")(predict)
    app.command("serve")(serve)
    app.command("bench")(bench)
