"""`edgeft serve --http`: a FastAPI app that batches concurrent requests through one model.

POST /predict takes one image as the raw body (image/* or application/octet-stream) or several as
multipart files, and answers top-k per image. GET /health names the model, backend and bundle sha256;
GET /metrics is Prometheus text from a per-app CollectorRegistry. Every failure is a JSON body with an
`error` code and a `message`: 400 bad image, 413 body too large, 503 queue full (with Retry-After),
504 inference timeout, 500 anything unexpected (logged; the server keeps running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from edgeft.errors import EdgeftError
from edgeft.runtime.preprocess import ImageDecodeError, load_image
from edgeft.runtime.serve.model import ServeModel, from_predictor, open_model, to_tensor, topk_rows
from edgeft.runtime.serve.outputs import LatencyWindow, RateMeter
from edgeft.runtime.serve.parity_monitor import ParityMonitor, ReferenceFactory, bundle_reference

log = logging.getLogger("edgeft.serve.http")

ENDPOINTS = ("/predict", "/health", "/metrics")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiError(Exception):
    """A request the server refuses; becomes a JSON response with `error`, `message` and maybe `reason`."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        details: list[dict] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.reason = status, error, message, reason
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.details is not None:
            out["items"] = self.details
        return out


def _json_bytes(obj: Any) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()


class Metrics:
    """Prometheus metrics of one app, in their own registry (several apps in one process never collide)."""

    def __init__(self, state: ServeState) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgeft_http_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "edgeft_http_request_duration_seconds",
            "HTTP request latency (receive to response)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("edgeft_images", "Images classified", registry=r)
        self.rejected = Counter("edgeft_rejected_requests", "Requests refused, by reason", ["reason"], registry=r)
        self.batch_size = Histogram("edgeft_batch_size", "Images per model call", buckets=BATCH_BUCKETS, registry=r)
        self.infer_seconds = Histogram(
            "edgeft_inference_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=r
        )

        class _Live:
            """Values read at scrape time: queue depth, parity monitor, model identity."""

            def collect(self) -> Iterable[Any]:
                batcher = state.batcher
                waiting = int(getattr(batcher, "queue_depth", 0) or 0) if batcher is not None else 0
                yield GaugeMetricFamily("edgeft_queue_depth", "Images waiting in the batcher queue", value=waiting)
                yield GaugeMetricFamily(
                    "edgeft_inflight_images",
                    "Images accepted and not answered yet (queued + running)",
                    value=state.pending,
                )
                yield GaugeMetricFamily("edgeft_queue_capacity", "Bound of the batcher queue", value=state.max_queue)
                info = InfoMetricFamily("edgeft_model", "The served model")
                info.add_metric(
                    [],
                    {
                        "name": state.model.name,
                        "backend": state.model.backend,
                        "bundle_sha256": state.model.bundle_sha256 or "",
                        "classes": str(len(state.model.classes)),
                    },
                )
                yield info
                mon = state.parity
                if mon is None:
                    return
                snap = mon.snapshot()
                yield GaugeMetricFamily(
                    "edgeft_parity_agreement",
                    "Top-1 agreement with the FP32 reference over the recent window (NaN before the first sample)",
                    value=math.nan if snap.agreement is None else snap.agreement,
                )
                yield GaugeMetricFamily(
                    "edgeft_parity_window_samples", "Samples in the agreement window", value=snap.window
                )
                yield GaugeMetricFamily(
                    "edgeft_parity_alert", "1 while agreement is below the alert level", value=int(snap.alerting)
                )
                yield CounterMetricFamily(
                    "edgeft_parity_checked", "Samples checked against the reference", value=snap.checked
                )
                yield CounterMetricFamily(
                    "edgeft_parity_disagreements", "Checked samples whose top-1 differed", value=snap.disagreements
                )
                yield CounterMetricFamily(
                    "edgeft_parity_dropped", "Samples dropped because the parity queue was full", value=snap.dropped
                )

        r.register(_Live())

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@dataclass
class ServeState:
    """Everything the routes share: model, batcher, parity monitor, limits and metrics."""

    model: ServeModel
    owns_model: bool
    topk: int
    max_queue: int
    max_batch: int
    max_wait_ms: float
    max_body_bytes: int
    request_timeout_s: float
    retry_after_s: int
    batcher_factory: Callable[..., Any] | None = None
    parity: ParityMonitor | None = None
    batcher: Any = None
    status_every_s: float = 0.0
    pending: int = 0
    predict_ok: int = 0
    predict_failed: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    rate: RateMeter = field(default_factory=RateMeter)
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self)

    def status_line(self) -> str:
        """The periodic one-liner: request rate, latency percentiles, queue depth, rejections, parity."""
        p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
        total = self.predict_ok + self.predict_failed
        waiting = int(getattr(self.batcher, "queue_depth", 0) or 0) if self.batcher is not None else 0
        parts = [
            f"http requests {total} (failed {self.predict_failed})",
            f"rps {self.rate.update(total):.1f}",
            f"p50 {'-' if p50 is None else f'{p50:.1f}'} ms",
            f"p99 {'-' if p99 is None else f'{p99:.1f}'} ms",
            f"queue {waiting}/{self.max_queue}",
            f"in flight {self.pending}",
        ]
        if self.parity is not None:
            parts.append(self.parity.snapshot().short())
        return " | ".join(parts)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The batcher's infer function: the model plus batch-size and timing metrics."""
        self.metrics.batch_size.observe(batch.shape[0])
        t0 = time.perf_counter()
        try:
            return self.model.infer(batch)
        finally:
            self.metrics.infer_seconds.observe(time.perf_counter() - t0)

    def _done(self, _fut: Future) -> None:
        with self.lock:
            self.pending -= 1

    def submit(self, tensors: list[np.ndarray]) -> list[Future]:
        """Queue every image of one request or none of them (QueueFull -> ApiError 503)."""
        from edgeft.runtime.predictor import QueueFull

        futures: list[Future] = []
        try:
            for x in tensors:
                with self.lock:
                    self.pending += 1
                try:
                    fut = self.batcher.submit(x)
                except BaseException:
                    with self.lock:
                        self.pending -= 1
                    raise
                fut.add_done_callback(self._done)
                futures.append(fut)
        except QueueFull:
            for f in futures:
                f.cancel()
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                503,
                "overloaded",
                f"the inference queue is full ({self.max_queue} images waiting); retry after {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)},
            ) from None
        return futures


async def read_body(receive_stream: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes by Content-Length and again while reading."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not an integer") from None
        if declared > limit:
            raise ApiError(
                413,
                "body_too_large",
                f"request body is {declared} bytes; the limit is {limit} bytes (--max-body-mb)",
            )
    buf = bytearray()
    async for chunk in receive_stream:
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes (--max-body-mb)")
    return bytes(buf)


def decode_items(items: list[tuple[str, bytes]], spec: Any) -> list[np.ndarray]:
    """Decode and preprocess every image (runs in a worker thread); any bad image -> one 400 naming each."""
    tensors, bad = [], []
    for i, (name, data) in enumerate(items):
        try:
            tensors.append(to_tensor(load_image(data, name=name), spec))
        except ImageDecodeError as exc:
            bad.append({"index": i, "source": name, "reason": exc.reason, "message": exc.message})
    if bad:
        first = bad[0]
        what = (
            "the body is not a readable image"
            if len(items) == 1
            else f"{len(bad)} of {len(items)} images are unreadable"
        )
        raise ApiError(
            400,
            "bad_image",
            f"{what} ({first['reason']}); {first['source']}: {first['message']}",
            reason=first["reason"],
            details=bad,
        )
    return tensors


def create_app(
    model_or_bundle: ServeModel | str | Path | Any,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    topk: int = 5,
    max_queue: int = 64,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = 10 * 1024 * 1024,
    parity_sample: float = 0.0,
    parity_alert: float = 0.98,
    parity_window: int = 200,
    parity_min_samples: int | None = None,
    parity_reference: ReferenceFactory | None = None,
    seed: int = 0,
    request_timeout_s: float = 30.0,
    retry_after_s: int = 1,
    status_every_s: float = 0.0,
    batcher_factory: Callable[..., Any] | None = None,
) -> FastAPI:
    """Build the FastAPI app; a bundle path and the parity reference load now, so errors surface before binding.

    A ServeModel or Predictor passed in is borrowed (not closed). The batcher starts with the app's lifespan;
    batcher, parity monitor and an owned model stop with it.
    """
    if isinstance(model_or_bundle, ServeModel):
        model, owns = model_or_bundle, False
    elif isinstance(model_or_bundle, (str, Path)):
        model, owns = open_model(model_or_bundle, backend, precision, batch_size=max_batch, topk=topk), True
    else:
        model, owns = from_predictor(model_or_bundle), False
        model.closer = None
    if max_queue < 1 or max_batch < 1 or max_body_bytes < 1:
        raise EdgeftError("max_queue, max_batch and max_body_bytes must be >= 1", fix="fix the serve options")

    parity = None
    if parity_sample > 0:
        reference = parity_reference
        if reference is None:
            if model.bundle_dir is None:
                raise EdgeftError(
                    "the parity monitor needs the bundle directory to load the FP32 reference",
                    fix="serve a bundle path, or pass parity_reference=",
                )
            reference = bundle_reference(model.bundle_dir)

        parity = ParityMonitor(
            reference,
            sample=parity_sample,
            alert_below=parity_alert,
            window=parity_window,
            min_samples=parity_min_samples,
            seed=seed,
        ).start()
        log.info("parity monitor on: reference %s, sample %.4f", parity.reference_name, parity_sample)

    state = ServeState(
        model=model,
        owns_model=owns,
        topk=topk,
        max_queue=max_queue,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_body_bytes=max_body_bytes,
        request_timeout_s=request_timeout_s,
        retry_after_s=retry_after_s,
        status_every_s=status_every_s,
        batcher_factory=batcher_factory,
        parity=parity,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        factory = state.batcher_factory
        if factory is None:
            from edgeft.runtime.predictor import DynamicBatcher

            factory = DynamicBatcher
        state.batcher = factory(state.infer, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
        stop = threading.Event()
        if state.status_every_s > 0:

            def report() -> None:
                while not stop.wait(state.status_every_s):
                    logging.getLogger("edgeft.serve").info("%s", state.status_line())

            threading.Thread(target=report, name="edgeft-http-status", daemon=True).start()
        try:
            yield
        finally:
            stop.set()
            state.batcher.close()
            if state.parity is not None:
                state.parity.close()
            if state.owns_model:
                state.model.close()

    app = FastAPI(title="edgeft serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        m = state.model
        return {
            "status": "ok",
            "model": m.name,
            "classes": len(m.classes),
            "backend": m.backend,
            "precision": m.precision,
            "bundle_sha256": m.bundle_sha256,
            "queue_depth": state.pending,
            "max_queue": state.max_queue,
            "parity_agreement": state.parity.agreement if state.parity is not None else None,
            "parity_alert": state.parity.alerting if state.parity is not None else None,
            "uptime_s": round(time.time() - state.started, 3),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"), state.max_body_bytes)
        except ApiError as exc:
            state.metrics.rejected.labels(exc.error).inc()
            raise
        items = await _split_images(request, body)
        if len(items) > state.max_queue:
            state.metrics.rejected.labels("too_many_images").inc()
            raise ApiError(
                400,
                "too_many_images",
                f"{len(items)} images in one request; at most {state.max_queue} (--max-queue) fit the queue",
            )
        from starlette.concurrency import run_in_threadpool

        try:
            tensors = await run_in_threadpool(decode_items, items, state.model.spec)
        except ApiError as exc:
            state.metrics.rejected.labels(exc.error).inc()
            raise
        futures = state.submit(tensors)
        try:
            logits = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), timeout=state.request_timeout_s
            )
        except asyncio.TimeoutError:
            for f in futures:
                f.cancel()
            state.metrics.rejected.labels("timeout").inc()
            raise ApiError(
                504, "timeout", f"inference did not finish within {state.request_timeout_s} s; the server is overloaded"
            ) from None
        rows = topk_rows(np.stack(logits), state.model.classes, state.topk)
        if state.parity is not None:
            for x, row in zip(tensors, rows, strict=True):
                state.parity.offer(x, row["index"])
        state.metrics.images.inc(len(rows))
        results = [{"source": name, **row} for (name, _), row in zip(items, rows, strict=True)]
        return JSONResponse(
            {
                "model": state.model.name,
                "backend": state.model.backend,
                "results": results,
                "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3),
            }
        )

    async def _split_images(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        """Multipart -> every uploaded file; anything else -> the raw body as one image."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            return [("<body>", body)]
        from starlette.datastructures import UploadFile
        from starlette.requests import Request as StarletteRequest

        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, replay).form(
                max_files=state.max_queue + 1, max_fields=state.max_queue + 16
            )
        except Exception as exc:  # starlette raises its own MultiPartException/HTTPException types
            state.metrics.rejected.labels("bad_multipart").inc()
            raise ApiError(
                400, "bad_multipart", f"cannot parse the multipart body ({exc})", reason="bad_multipart"
            ) from None
        try:
            items = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    items.append((value.filename or key, await value.read()))
        finally:
            await form.close()
        if not items:
            state.metrics.rejected.labels("no_images").inc()
            raise ApiError(
                400,
                "no_images",
                "the multipart body has no file parts; send images as files (curl -F file=@fish.jpg)",
                reason="no_images",
            )
        return items

    app.add_middleware(_MetricsAndErrors, state=state)
    return app


class _MetricsAndErrors:
    """Outermost ASGI layer: counts every response by status, times it, and turns any crash into a 500 JSON."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        started = False

        async def send_wrapper(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            status = 499  # nginx's "client closed request": nobody is left to answer
            log.info("client went away during %s %s", scope.get("method"), path)
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            status = 500
            if not started:
                body = _json_bytes({"error": "internal", "message": f"internal server error ({type(exc).__name__})"})
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                with contextlib.suppress(Exception):  # the client may be gone too
                    await send({"type": "http.response.start", "status": 500, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - t0
            m = self.state.metrics
            m.requests.labels(endpoint, str(status)).inc()
            m.latency.labels(endpoint).observe(elapsed)
            if endpoint == "/predict":
                if status < 400:
                    self.state.predict_ok += 1
                    self.state.latency.add(elapsed * 1000.0)
                else:
                    self.state.predict_failed += 1


def _free_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets that say so, and without it
    # Nagle + delayed ACK add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EdgeftError(
            f"cannot bind {host}:{port} ({exc.strerror})", fix="pick another port, e.g. --http 127.0.0.1:8080"
        ) from None
    return sock


class BackgroundServer:
    """Run an app in a real uvicorn server on a thread (tests, benchmarks); port 0 picks a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = _free_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level=log_level, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EdgeftError(
                    "the HTTP server did not start (see the log above)", fix="check the bundle and options"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=15.0)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_host_port(text: str) -> tuple[str, int]:
    """'8080' / ':8080' -> 127.0.0.1:8080; 'HOST:PORT' as given; '[::1]:8080' for IPv6."""
    text = text.strip()
    host, port_text = "127.0.0.1", text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        host = host or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise EdgeftError(f"--http {text!r} is not HOST:PORT", fix="e.g. --http 127.0.0.1:8080") from None
    if not 0 <= port <= 65535:
        raise EdgeftError(f"port {port} is out of range", fix="use a port in 1-65535, e.g. --http 127.0.0.1:8080")
    return host, port


def serve_http(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Run the app in the foreground until Ctrl-C (uvicorn handles the signal and shuts down gracefully)."""
    import uvicorn

    sock = _free_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise EdgeftError("the HTTP server did not start (see the log above)", fix="check the bundle and options")
