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
FAST = typer.Option(
    False,
    "--fast-preprocess",
    help="Faster preprocessing, not bit-exact (its agreement: `edgeft parity --fast-preprocess`): opencv runs "
    "decode JPEGs with libjpeg-turbo (simplejpeg), reduced in size where the box filter allows, and resize with "
    "INTER_LINEAR; pil runs resample only the crop region. OpenVINO then takes the uint8 images and "
    "normalises them in its graph.",
)


def bundle_dir_of(target: Path | None) -> Path:
    """The bundle a command runs; says on stderr which one when it was picked automatically."""
    where = locate(target, need_bundle=True)
    assert where.bundle_dir is not None
    if where.chosen:
        console.labelled("Bundle", f"{where.bundle_dir} (of the latest run under runs/)", stderr=True)
    elif where.run_dir is not None and target is not None and not is_bundle_dir(Path(target)):
        console.labelled("Bundle", f"{where.bundle_dir} (exported from {target})", stderr=True)
    return where.bundle_dir


@contextlib.contextmanager
def serve_logging() -> Iterator[None]:
    """Status lines, reconnects, parity alerts and the HTTP server's own records (uvicorn) go to stderr in one
    format while the command runs; stdout stays clean JSONL."""
    # one plain line per record, at a terminal as in journald, docker logs or a file: never re-wrapped into columns
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("edgeft.serve", "uvicorn")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


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
    paths: list[Path] = typer.Argument(
        ..., help="[BUNDLE|RUN] IMAGE|FOLDER...: images, or folders of them (unreadable ones get an error line)."
    ),
    backend: str = BACKEND,
    precision: str = PRECISION,
    batch_size: int = BATCH_SIZE,
    topk: int = TOPK,
    workers: int = WORKERS,
    unknown_below: float = UNKNOWN_BELOW,
    logits: bool = typer.Option(False, "--logits", help="Include raw logits in each line."),
    fast_preprocess: bool = FAST,
) -> None:
    """Classify images and print one JSON Prediction per line (the engine used goes to stderr)."""
    from edgeft.serve.config import ServeConfig
    from edgeft.serve.predictor import Predictor

    first = paths[0]
    target = first if first.is_dir() and (is_bundle_dir(first) or is_run_dir(first)) else None
    images = _image_paths(paths[1:] if target is not None else paths)
    config = ServeConfig.build(
        model={
            "backend": backend,
            "precision": precision,
            "batch_size": batch_size,
            "topk": topk,
            "workers": workers,
            "fast_preprocess": fast_preprocess,
            "unknown_below": unknown_below,
        }
    )
    with Predictor.from_options(bundle_dir_of(target), config.model) as predictor:
        console.labelled("engine", predictor.describe(), stderr=True)
        classified = 0
        for pred in predictor.predict_iter(images):
            classified += pred.ok
            typer.echo(pred.to_json(with_logits=logits))
    if not classified:
        raise EdgeftError(
            f"none of the {len(images)} input(s) could be classified; each line above says why",
            path=images[0] if len(images) == 1 else None,
            fix="check the paths: pass image files, or folders of them",
        )


def _image_paths(paths: list[Path]) -> list[Path]:
    """The images to classify: files as given, folders replaced by the images under them (each once)."""
    from edgeft.serve.sources.files import IMAGE_EXTENSIONS, list_images

    if not paths:
        raise EdgeftError("no images given", fix="edgeft predict [BUNDLE|RUN] IMAGE|FOLDER...")
    images: list[Path] = []
    for p in paths:
        if not p.is_dir():
            images.append(p)
            continue
        found = list_images(p)
        if not found:
            raise EdgeftError(
                "this folder holds no images",
                path=p,
                fix=f"pass images ({', '.join(IMAGE_EXTENSIONS)}) or their folder",
            )
        images += found
    return images


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
    to_stderr = report.jsonl == "stdout"  # stdout holds the JSON lines: keep it clean
    if report.jsonl != "none":
        console.outputs("predictions", f"{report.jsonl} ({report.lines} lines)", stderr=to_stderr)
    if report.saved is not None:
        console.outputs("annotated", report.saved, stderr=to_stderr)


def _serve_http(bundle_dir: Path, http: str, config: Any) -> None:
    from edgeft.serve.http import create_app
    from edgeft.serve.server import parse_host_port, serve_http

    host, port = parse_host_port(http)
    app = create_app(bundle_dir, config)
    interrupted = False
    try:
        serve_http(app, host, port)  # a server that cannot bind raises before it starts: no "stopped" line then
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM is how a server stops: say so, exit 130, no "error:"
        interrupted = True
    console.say(f"stopped: {app.state.serve.metrics.status_line()}", stderr=True)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _serve_config(o: dict[str, Any]) -> Any:
    """`edgeft serve`'s options (by parameter name) -> the one validated ServeConfig."""
    from edgeft.serve.config import ServeConfig

    def pick(*names: str) -> dict[str, Any]:
        return {n: o[n] for n in names}

    return ServeConfig.build(
        model=pick("backend", "precision", "batch_size", "topk", "fast_preprocess", "unknown_below"),
        parity={"sample": o["parity_sample"], "alert_below": o["parity_alert"], "seed": o["seed"]},
        stream={
            **pick("jsonl", "save", "max_frames", "reconnect", "max_retries"),
            "human": o["jsonl"] is None and sys.stdout.isatty(),
        },
        http={**pick("max_queue", "max_body_mb", "max_wait_ms", "max_pixels_mp"), "read_timeout_s": o["read_timeout"]},
        status_every_s=o["status_every"],
    )


def serve(
    target: Path = TARGET,
    camera: int = typer.Option(
        None, "--camera", metavar="[N]", help="Camera index; --camera alone is camera 0 (live: newest frame)."
    ),
    source: str = typer.Option(
        None, "--source", help="Video file, rtsp:// or http(s):// MJPEG URL, image folder or quoted glob."
    ),
    http: str = typer.Option(None, "--http", help="Serve an HTTP API on HOST:PORT (default host 127.0.0.1)."),
    backend: str = BACKEND,
    precision: str = PRECISION,
    batch_size: int = BATCH_SIZE,
    topk: int = TOPK,
    unknown_below: float = UNKNOWN_BELOW,
    jsonl: str = typer.Option(
        None,
        "--jsonl",
        metavar="[PATH]",
        help="One JSON line per frame, to PATH or (alone) to stdout. Default: JSONL when stdout is piped, "
        "a short line per frame at a terminal.",
    ),
    save: Path = typer.Option(
        None, "--save", help="Annotated output: FILE.mp4/.avi (that video file) or a folder (images or an .avi)."
    ),
    max_frames: int = typer.Option(None, "--max-frames", help="Stop after N frames."),
    reconnect: bool = typer.Option(
        None, "--reconnect/--no-reconnect", help="Reopen a lost camera/stream with backoff (default: on for live)."
    ),
    max_retries: int = typer.Option(
        5, "--max-retries", help="Reconnect attempts before giving up (a source that never opened: at most 2)."
    ),
    parity_sample: float = typer.Option(
        0.0, "--parity-sample", help="Share of inputs re-checked against the FP32 reference (e.g. 0.01)."
    ),
    parity_alert: float = typer.Option(
        0.98, "--parity-alert", help="Alert when the gate's agreement floor is missed (INT8/FP16)."
    ),
    status_every: float = typer.Option(5.0, "--status-every", help="Seconds between status lines (0: off)."),
    max_queue: int = typer.Option(64, "--max-queue", help="HTTP: images waiting for the model before 503."),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", help="HTTP: request body limit (413 above)."),
    max_pixels_mp: float = typer.Option(
        40.0, "--max-pixels-mp", help="HTTP: megapixels one request may decode, read from the headers (413 above)."
    ),
    read_timeout: float = typer.Option(
        15.0, "--read-timeout", help="HTTP: seconds a client has to send a whole request (then 408, closed)."
    ),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="HTTP: how long a batch waits to fill."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parity sampler."),
    fast_preprocess: bool = FAST,
) -> None:
    """Classify a camera, stream, video or image folder live, or serve POST /predict over HTTP."""
    from edgeft.serve.stream import serve_stream

    stream_only = {"--jsonl": jsonl, "--save": save, "--max-frames": max_frames, "--reconnect": reconnect}
    mode = input_mode(camera, source, http, stream_only)
    config = _serve_config(locals())
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


BENCH_COLUMNS = (
    console.Col("backend/artifact", "left", split="/"),
    console.Col("gate", "left"),
    console.Col("batch"),
    console.Col("engine\nimg/s"),
    console.Col("engine\np50 ms", drop=3),
    console.Col("e2e\nimg/s"),
    console.Col("request\np50 ms", drop=2),
    console.Col("over-\nhead", drop=1),
    console.Col("MB"),
)


def render_bench(report: Any, path: Path) -> None:
    """The benchmark table: speed next to the gate verdict export recorded (p99s and memory: bench.json)."""
    rows = [
        [
            escape(f"{r.backend}/{r.artifact}"),
            _gate_cell(r),
            str(r.batch),
            f"{r.engine.throughput:.0f}",
            f"{r.engine.p50_ms:.1f}",
            f"{r.e2e['throughput']:.0f}",
            f"{r.e2e_request.p50_ms:.1f}",
            f"{100 * r.pipeline_overhead:.0f}%",
            f"{r.model_mb:.1f}",
        ]
        for r in report.results
    ]
    table = console.fitted_table(f"bench {report.bundle_dir} ({report.images})", BENCH_COLUMNS, rows)
    console.out().print(table)
    cores, cost = report.machine.get("physical_cores") or 1, report.preprocess_cpu_ms_per_image
    if cost > 0:
        console.say(f"decode + preprocess: {cost:.2f} CPU ms per image, so at most")
        console.say(f"{1000.0 * cores / cost:.0f} img/s on {cores} core(s) before any inference (e2e shares them)")
    if report.image_preprocess_cpu_ms_per_image:
        console.say(
            f"up to the uint8 image (OpenVINO normalises in its graph): "
            f"{report.image_preprocess_cpu_ms_per_image:.2f} CPU ms per image"
        )
    for key, why in report.skipped_backends.items():
        console.say(f"skipped {key}: {why}", "yellow")
    for key, why in report.failed_backends.items():
        console.say(f"failed {key}: {why}", "red")
    console.outputs("bench.json", path)
    from edgeft.serve.bench import CHART

    chart = path.with_name(CHART)
    if chart.is_file():
        console.outputs("accuracy-latency chart", chart)


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
    input_kind: str = typer.Option(
        "files", "--input", help="files: encoded test images; frames: decoded 640x480 frames (the camera path)."
    ),
    fast_preprocess: bool = FAST,
) -> None:
    """Throughput, latency, pipeline overhead, size and memory of every backend x precision x batch size."""
    from edgeft.cli.check import split_list
    from edgeft.engines.openvino import OV_HINTS
    from edgeft.serve.bench import BenchSettings, run_bench

    if hint and hint.upper() not in OV_HINTS:
        raise EdgeftError(
            f"--hint: unknown OpenVINO performance hint {hint!r}", fix=f"use one of {', '.join(OV_HINTS)}"
        )
    settings = BenchSettings.build(
        batches=batch,
        backends=split_list(backends),
        seconds=seconds,
        warmup=warmup,
        workers=workers,
        include_torch=torch_baseline,
        engine_options={"hint": hint} if hint else {},
        input=input_kind,
        fast_preprocess=fast_preprocess,
    )
    bundle_dir = bundle_dir_of(target)
    with console.reporting() as rep:
        report = run_bench(bundle_dir, settings, out, reporter=rep)
    render_bench(report, Path(out) if out is not None else bundle_dir / "bench.json")


def register(app: typer.Typer) -> None:
    """Add predict, serve and bench to the edgeft CLI."""
    app.command("predict", short_help="Classify images: one JSON line per image.")(predict)
    app.command("serve", short_help="Classify a camera, stream, video, folder or HTTP.")(serve)
    app.command("bench", short_help="Speed, latency, size and memory of every backend.")(bench)
