"""`edgeft serve BUNDLE`: classify a camera, stream, video or image folder live, or serve an HTTP API."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from edgeft.errors import EdgeftError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _setup_logging() -> None:
    """Status lines, reconnects and parity alerts go to stderr, so stdout stays clean JSONL."""
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("edgeft.serve")
    if not any(getattr(h, "_edgeft_serve", False) for h in logger.handlers):
        handler: logging.Handler
        if sys.stderr.isatty():
            handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False, rich_tracebacks=False)
        else:  # journald, docker logs, files: one plain line per record, never wrapped
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._edgeft_serve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _say(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(text, highlight=False, markup=False)


def check_modes(
    camera: int | None,
    source: str | None,
    http: str | None,
    *,
    jsonl: str | None,
    save: Path | None,
    max_frames: int | None,
    reconnect: bool | None,
    parity_sample: float,
    parity_alert: float,
    batch_size: int,
    topk: int,
    max_queue: int,
    max_body_mb: float,
) -> str:
    """Refuse bad option combinations up front; returns the mode ('camera', 'source' or 'http')."""
    given = [name for name, v in (("--camera", camera), ("--source", source), ("--http", http)) if v is not None]
    if len(given) != 1:
        raise EdgeftError(
            f"give exactly one input mode; got {', '.join(given) if given else 'none'}",
            fix="use one of --camera INDEX, --source PATH|URL|GLOB or --http HOST:PORT",
        )
    mode = given[0].lstrip("-")
    if mode == "http":
        stream_only = [
            n
            for n, v in (("--jsonl", jsonl), ("--save", save), ("--max-frames", max_frames), ("--reconnect", reconnect))
            if v is not None
        ]
        if stream_only:
            raise EdgeftError(
                f"{', '.join(stream_only)} only apply to --camera/--source, not to --http",
                fix="drop them, or serve a camera/source instead",
            )
    if mode == "source" and reconnect:
        from edgeft.runtime.serve.sources import is_live_url

        if not is_live_url(source or ""):
            raise EdgeftError(
                "--reconnect applies to live sources (camera, rtsp:// or http(s):// URL), not to files or folders",
                fix="drop --reconnect; a file is read once, in order",
            )
    if not 0.0 <= parity_sample <= 1.0:
        raise EdgeftError(f"--parity-sample must be in [0, 1], got {parity_sample}", fix="e.g. --parity-sample 0.01")
    if not 0.0 <= parity_alert <= 1.0:
        raise EdgeftError(f"--parity-alert must be in [0, 1], got {parity_alert}", fix="e.g. --parity-alert 0.98")
    for name, value in (("--batch-size", batch_size), ("--topk", topk), ("--max-queue", max_queue)):
        if value < 1:
            raise EdgeftError(f"{name} must be >= 1, got {value}", fix=f"e.g. {name} 8")
    if max_frames is not None and max_frames < 1:
        raise EdgeftError(f"--max-frames must be >= 1, got {max_frames}", fix="e.g. --max-frames 100, or leave it out")
    if max_body_mb <= 0:
        raise EdgeftError(f"--max-body-mb must be > 0, got {max_body_mb}", fix="e.g. --max-body-mb 10")
    return mode


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
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


def run_stream_command(
    bundle: Path,
    *,
    camera: int | None,
    source: str | None,
    backend: str,
    precision: str,
    batch_size: int,
    topk: int,
    jsonl: str | None,
    save: Path | None,
    max_frames: int | None,
    reconnect: bool | None,
    max_retries: int,
    parity_sample: float,
    parity_alert: float,
    status_every: float,
    seed: int,
) -> Any:
    """The --camera/--source path; returns the StreamReport."""
    from edgeft.runtime.serve.model import open_model
    from edgeft.runtime.serve.outputs import AnnotatedSaver, JsonlSink
    from edgeft.runtime.serve.parity_monitor import ParityMonitor, bundle_reference
    from edgeft.runtime.serve.sources import SourceOptions, open_source
    from edgeft.runtime.serve.stream import StreamRunner

    log = logging.getLogger("edgeft.serve")
    src = open_source(camera, source, SourceOptions(reconnect=reconnect, max_retries=max_retries))
    with contextlib.ExitStack() as stack:
        live_options = {"hint": "LATENCY"} if src.live else {}  # batch-1 live frames: OpenVINO's latency mode
        model = stack.enter_context(
            open_model(bundle, backend, precision, batch_size=batch_size, topk=topk, **live_options)
        )
        parity = None
        if parity_sample > 0:
            parity = ParityMonitor(
                bundle_reference(bundle), sample=parity_sample, alert_below=parity_alert, seed=seed
            ).start()
            stack.callback(parity.close)
        sink = JsonlSink(jsonl)
        stack.callback(sink.close)
        saver = None
        if save is not None:
            saver = AnnotatedSaver(save, as_video=src.kind != "images", fps=src.fps, source_id=src.source_id)
            stack.callback(saver.close)
        log.info(
            "serving %s (%s) with %s%s",
            src.source_id,
            "live, newest frame" if src.live else "every frame, in order",
            model.backend,
            f", parity sample {parity_sample} vs {parity.reference_name}" if parity is not None else "",
        )
        runner = StreamRunner(
            model,
            src,
            sink,
            saver=saver,
            batch_size=batch_size,
            topk=topk,
            max_frames=max_frames,
            status_every_s=status_every,
            parity=parity,
        )
        src.start()
        try:
            with _sigterm_as_interrupt():
                report = runner.run()
        finally:
            stack.close()
            _say(_summary(runner.report, sink, saver))
        return report


def _summary(report: Any, sink: Any, saver: Any) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    lines = [
        f"processed {report.frames} frames in {report.elapsed_s:.1f} s"
        f" ({report.fps or 0.0:.1f} fps; latency p50 {ms(report.p50_ms)}, p99 {ms(report.p99_ms)};"
        f" dropped {report.dropped}; reconnects {report.reconnects}; errors {report.errors}; stopped by {report.stopped_by})",
        f"predictions: {sink.describe()} ({sink.lines} lines)",
    ]
    if saver is not None:
        lines.append(f"annotated: {saver.describe()}")
    if report.parity is not None:
        lines.append(
            f"parity vs {report.parity.reference}: {report.parity.short()}; checked {report.parity.checked}, "
            f"disagreements {report.parity.disagreements}"
        )
    return "\n".join(lines)


def run_http_command(
    bundle: Path,
    *,
    http: str,
    backend: str,
    precision: str,
    batch_size: int,
    topk: int,
    parity_sample: float,
    parity_alert: float,
    status_every: float,
    max_queue: int,
    max_body_mb: float,
    max_wait_ms: float,
    seed: int,
) -> None:
    """The --http path: load, bind, serve until Ctrl-C."""
    from edgeft.runtime.serve.http import create_app, parse_host_port, serve_http

    log = logging.getLogger("edgeft.serve")
    host, port = parse_host_port(http)
    if host not in LOOPBACK_HOSTS:
        log.warning("binding %s exposes the API to the network; it has no authentication", host)
    app = create_app(
        bundle,
        backend=backend,
        precision=precision,
        topk=topk,
        max_queue=max_queue,
        max_batch=batch_size,
        max_wait_ms=max_wait_ms,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        parity_sample=parity_sample,
        parity_alert=parity_alert,
        seed=seed,
        status_every_s=status_every,
    )
    state = app.state.serve
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving %s (%s) on http://%s:%d: POST /predict, GET /health, GET /metrics",
        state.model.name,
        state.model.backend,
        shown,
        port,
    )
    try:
        serve_http(app, host, port)
    finally:
        _say(
            f"stopped http://{shown}:{port}: {state.predict_ok} predict requests answered, "
            f"{state.predict_failed} refused or failed"
            + (f"; {state.parity.snapshot().short()}" if state.parity is not None else "")
        )


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        bundle: Path = typer.Argument(..., help="Bundle directory (holds bundle.json)."),
        camera: int | None = typer.Option(None, "--camera", help="Camera index (live: newest frame, reconnects)."),
        source: str | None = typer.Option(
            None, "--source", help="Video file, rtsp:// or http(s):// MJPEG URL, image directory or quoted glob."
        ),
        http: str | None = typer.Option(
            None, "--http", help="Serve an HTTP API on HOST:PORT (default host 127.0.0.1)."
        ),
        backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime[:cpu|cuda], openvino[:CPU], ..."),
        precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8."),
        batch_size: int = typer.Option(8, "--batch-size", help="Frames per model call (files, folders, HTTP)."),
        topk: int = typer.Option(5, "--topk", help="Labels per prediction."),
        jsonl: str | None = typer.Option(None, "--jsonl", help="Write one JSON line per frame here (default stdout)."),
        save: Path | None = typer.Option(None, "--save", help="Write an annotated video / image folder here."),
        max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after N frames."),
        reconnect: bool | None = typer.Option(
            None, "--reconnect/--no-reconnect", help="Reopen a lost camera/stream with backoff (default: on for live)."
        ),
        max_retries: int = typer.Option(5, "--max-retries", help="Reconnect attempts before giving up."),
        parity_sample: float = typer.Option(
            0.0, "--parity-sample", help="Fraction of inputs re-checked against the FP32 reference (e.g. 0.01)."
        ),
        parity_alert: float = typer.Option(0.98, "--parity-alert", help="Warn when top-1 agreement falls below this."),
        status_every: float = typer.Option(5.0, "--status-every", help="Seconds between status lines (0: off)."),
        max_queue: int = typer.Option(64, "--max-queue", help="HTTP: images waiting for the model before 503."),
        max_body_mb: float = typer.Option(10.0, "--max-body-mb", help="HTTP: request body limit (413 above)."),
        max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="HTTP: how long a batch waits to fill."),
        seed: int = typer.Option(0, "--seed", help="Seed of the parity sampler."),
    ) -> None:
        """Classify a camera, stream, video or image folder live, or serve POST /predict over HTTP."""
        mode = check_modes(
            camera,
            source,
            http,
            jsonl=jsonl,
            save=save,
            max_frames=max_frames,
            reconnect=reconnect,
            parity_sample=parity_sample,
            parity_alert=parity_alert,
            batch_size=batch_size,
            topk=topk,
            max_queue=max_queue,
            max_body_mb=max_body_mb,
        )
        _setup_logging()
        if mode == "http":
            assert http is not None
            run_http_command(
                bundle,
                http=http,
                backend=backend,
                precision=precision,
                batch_size=batch_size,
                topk=topk,
                parity_sample=parity_sample,
                parity_alert=parity_alert,
                status_every=status_every,
                max_queue=max_queue,
                max_body_mb=max_body_mb,
                max_wait_ms=max_wait_ms,
                seed=seed,
            )
            return
        report = run_stream_command(
            bundle,
            camera=camera,
            source=source,
            backend=backend,
            precision=precision,
            batch_size=batch_size,
            topk=topk,
            jsonl=jsonl,
            save=save,
            max_frames=max_frames,
            reconnect=reconnect,
            max_retries=max_retries,
            parity_sample=parity_sample,
            parity_alert=parity_alert,
            status_every=status_every,
            seed=seed,
        )
        if report.stopped_by == "interrupt":
            sys.exit(130)
