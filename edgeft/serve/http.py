"""`edgeft serve --http`: a FastAPI app that batches concurrent requests through one Predictor.

POST /predict takes one image as the raw body (image/* or application/octet-stream) or several as multipart
files, and answers a `PredictResponse` (one `Prediction` per image). GET /health names the model, engine and
bundle sha256; GET /metrics is Prometheus text; /openapi.json documents it all. Every failure is an
`ErrorBody` JSON: 400 bad image, 413 body too large or too many pixels (read from the image headers before
anything is decoded), 503 queue full (with Retry-After), 504 inference timeout, 500 anything unexpected
(logged; the server keeps running). At most one decode per decode thread runs at a time, server-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from edgeft import __version__
from edgeft.core.errors import ImageDecodeError
from edgeft.core.preprocess import image_size
from edgeft.serve.batcher import DynamicBatcher, QueueFull
from edgeft.serve.config import ServeConfig
from edgeft.serve.metrics import ServeMetrics
from edgeft.serve.monitor import ParityMonitor, ReferenceFactory, monitor_for
from edgeft.serve.predictor import Predictor
from edgeft.serve.schema import ErrorBody, ErrorItem, HealthResponse, PredictResponse

log = logging.getLogger("edgeft.serve.http")

ENDPOINTS = ("/predict", "/health", "/metrics")
HTTP_ERRORS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "unreadable image, no image, or too many images"},
    413: {"model": ErrorBody, "description": "request body over --max-body-mb, or images over --max-pixels-mp"},
    500: {"model": ErrorBody, "description": "the model failed (logged on the server)"},
    503: {"model": ErrorBody, "description": "the inference queue is full; retry after Retry-After seconds"},
    504: {"model": ErrorBody, "description": "inference did not finish in time"},
}
RAW_BODY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY_DOC = {"requestBody": {"content": {"image/*": RAW_BODY, "application/octet-stream": RAW_BODY}}}


class ApiError(Exception):
    """A request the server refuses; becomes an ErrorBody JSON response."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        items: list[ErrorItem] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload = ErrorBody(error=error, message=message, reason=reason, items=items)
        self.headers = headers or {}


@dataclass
class ServeState:
    """What the routes share: the Predictor, its batcher, the monitor, the settings and the metrics."""

    predictor: Predictor
    config: ServeConfig
    metrics: ServeMetrics
    monitor: ParityMonitor | None
    owns_predictor: bool
    batcher: DynamicBatcher | None = None
    started: float = field(default_factory=time.time)
    decode_waiting: int = 0  # images of admitted requests not yet decoded (event-loop thread only)
    decode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    def status_line(self) -> str:
        return self.metrics.status_line()

    def health(self) -> HealthResponse:
        p = self.predictor
        snap = self.monitor.snapshot() if self.monitor is not None else None
        return HealthResponse(
            status="degraded" if snap is not None and snap.alerting else "ok",
            model=p.name,
            classes=len(p.classes),
            backend=p.describe(),
            precision=p.precision,
            bundle_sha256=p.bundle_sha256,
            inflight=int(self.metrics.value("edgeft_inflight_images")),
            max_queue=self.config.http.max_queue,
            parity_agreement=snap.agreement if snap is not None else None,
            parity_alert=snap.alerting if snap is not None else None,
            uptime_s=round(time.time() - self.started, 3),
        )

    def submit(self, tensors: list[np.ndarray]) -> list[Future]:
        """Queue every image of one request or none of them (a full queue -> 503 with Retry-After)."""
        assert self.batcher is not None, "the app's lifespan has not started"
        futures: list[Future] = []
        try:
            for x in tensors:
                fut = self.batcher.submit(x)
                self.metrics.inflight.inc()
                fut.add_done_callback(lambda _f: self.metrics.inflight.dec())
                futures.append(fut)
        except QueueFull:
            for f in futures:
                f.cancel()
            raise self.overloaded(
                f"the inference queue is full ({self.config.http.max_queue} images waiting)"
            ) from None
        return futures

    def overloaded(self, why: str) -> ApiError:
        retry = self.config.http.retry_after_s
        return ApiError(503, "overloaded", f"{why}; retry after {retry} s", headers={"Retry-After": str(retry)})

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.monitor is not None:
            self.monitor.close()
        if self.owns_predictor:
            self.predictor.close()


async def request_images(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """Multipart -> every uploaded file; any other content type -> the raw body as one image."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        # every file part, whatever its field name (-F files=@a.jpg, -F file=@a.jpg, -F image=@a.jpg); the form
        # FastAPI parsed for `files` is cached on the request
        parts = [v for _, v in (await request.form()).multi_items() if isinstance(v, StarletteUploadFile)]
        if not parts:
            form = ctype.startswith("multipart/")
            raise ApiError(
                400,
                "no_images",
                ("the form has no file parts" if form else f"the body is declared {ctype.split(';')[0]} (a form)")
                + "; send images as files (curl -F file=@fish.jpg), or one image as the body with its own content "
                "type (curl -H 'Content-Type: image/jpeg' --data-binary @fish.jpg)",
                reason="no_images",
            )
        items = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(parts)]
    else:
        items = [("<body>", await request.body())]
    if len(items) > max_images:
        raise ApiError(
            400,
            "too_many_images",
            f"{len(items)} images in one request; at most {max_images} (--max-queue) fit the queue",
        )
    return items


def _bad_images(items: list[tuple[str, bytes]], bad: list[ErrorItem]) -> ApiError:
    what = (
        "the body is not a readable image" if len(items) == 1 else f"{len(bad)} of {len(items)} images are unreadable"
    )
    first = bad[0]
    message = f"{what} ({first.reason}); {first.source}: {first.message}"
    return ApiError(400, "bad_image", message, reason=first.reason, items=bad)


TRIM_AFTER_PIXELS = 8_000_000


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise) after decoding a large image."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        with contextlib.suppress(AttributeError):
            _LIBC.malloc_trim(0)


_LIBC: Any = None


def check_pixel_budget(items: list[tuple[str, bytes]], budget: int) -> int:
    """Read every image's size from its header (nothing decoded); 400 for unreadable ones, 413 over the budget."""
    bad, sizes = [], []
    for i, (name, data) in enumerate(items):
        try:
            sizes.append((name, image_size(data, name)))
        except ImageDecodeError as exc:
            bad.append(ErrorItem(index=i, source=name, reason=exc.reason, message=exc.message))
    if bad:
        raise _bad_images(items, bad)
    total = sum(w * h for _, (w, h) in sizes)
    if total > budget:
        name, (w, h) = max(sizes, key=lambda s: s[1][0] * s[1][1])
        what = f"{name} is {w}x{h} ({_px(w * h)})"
        if len(sizes) > 1:
            what = f"the {len(sizes)} images decode to {_px(total)} (largest: {what})"
        raise ApiError(
            413,
            "too_many_pixels",
            f"{what}; one request may decode at most {_px(budget)}; send smaller images or raise --max-pixels-mp",
            reason="too_many_pixels",
        )
    return total


def _px(n: int) -> str:
    return f"{n / 1e6:.1f} Mpx" if n >= 100_000 else f"{n} px"


async def decode(state: ServeState, items: list[tuple[str, bytes]]) -> list[np.ndarray]:
    """Decode and preprocess every image on the Predictor's decode pool, at most `workers` at once server-wide.

    The pixel budget is checked from the headers first; more images waiting to decode than --max-queue -> 503.
    """
    http = state.config.http
    pixels = check_pixel_budget(items, http.max_pixels)
    if state.decode_waiting + len(items) > http.max_queue:
        raise state.overloaded(f"{state.decode_waiting} images are waiting to be decoded")
    state.decode_waiting += len(items)
    slots = state.decode_slots

    async def one(name: str, data: bytes) -> np.ndarray:
        async with slots:
            fut = state.predictor.submit_prepare(data, name, max_pixels=http.max_pixels)
            return await asyncio.wrap_future(fut)

    try:
        results = await asyncio.gather(*(one(n, d) for n, d in items), return_exceptions=True)
    finally:
        state.decode_waiting -= len(items)
        if pixels >= TRIM_AFTER_PIXELS:
            release_memory()
    bad = []
    for i, ((name, _), r) in enumerate(zip(items, results, strict=True)):
        if isinstance(r, ImageDecodeError):
            bad.append(ErrorItem(index=i, source=name, reason=r.reason, message=r.message))
        elif isinstance(r, BaseException):
            raise r
    if bad:
        raise _bad_images(items, bad)
    return list(results)  # type: ignore[arg-type]


async def infer(state: ServeState, tensors: list[np.ndarray]) -> list[np.ndarray]:
    """Logits rows through the batcher; a full queue, a timeout or a failing model become ApiErrors."""
    futures = state.submit(tensors)
    timeout = state.config.http.request_timeout_s
    try:
        return await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), timeout=timeout)
    except asyncio.TimeoutError:
        for f in futures:
            f.cancel()
        raise ApiError(
            504, "timeout", f"inference did not finish within {timeout} s; the server is overloaded"
        ) from None
    except Exception as exc:
        log.exception("the model failed on a /predict request")
        raise ApiError(500, "inference_failed", f"the model failed on this request ({type(exc).__name__})") from None


def _add_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return state.health()

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=PREDICT_BODY_DOC)
    async def predict(
        request: Request,
        files: list[UploadFile] | None = File(None, description="images as multipart files (or one image as the body)"),
        logits: bool = Query(False, description="include the raw logits of each image"),
    ) -> PredictResponse:
        """Classify one image (raw body) or several (multipart files)."""
        t0 = time.perf_counter()
        items = await request_images(request, state.config.http.max_queue)  # `files` documents the parts
        tensors = await decode(state, items)
        rows = await infer(state, tensors)
        preds = state.predictor.predictions([name for name, _ in items], np.stack(rows), with_logits=logits)
        if state.monitor is not None:
            for x, row in zip(tensors, rows, strict=True):
                state.monitor.offer(x, row)
        state.metrics.images.inc(len(preds))
        return PredictResponse(
            model=state.predictor.name,
            backend=state.predictor.describe(),
            predictions=preds,
            latency_ms=round((time.perf_counter() - t0) * 1000.0, 3),
        )


def _add_error_handlers(app: FastAPI, state: ServeState) -> None:
    def reply(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
        state.metrics.errors.labels(body.error).inc()
        return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return reply(exc.status, exc.payload, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_ERRORS.get(exc.status_code, "http_error")
        return reply(exc.status_code, ErrorBody(error=code, message=str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return reply(400, ErrorBody(error="bad_request", message=f"{where}: {first.get('msg')}"))


def _lifespan(state: ServeState) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        http = state.config.http
        timed = state.metrics.timed_infer(state.predictor.infer)
        state.batcher = state.predictor.batcher(http.max_wait_ms, http.max_queue, infer=timed)
        state.metrics.watch_queue(lambda: state.batcher.queue_depth if state.batcher is not None else 0)
        stop = threading.Event()
        every = state.config.status_every_s
        if every > 0:

            def report() -> None:
                while not stop.wait(every):
                    logging.getLogger("edgeft.serve").info("%s", state.status_line())

            threading.Thread(target=report, name="edgeft-http-status", daemon=True).start()
        try:
            yield
        finally:
            stop.set()
            state.close()

    return lifespan


def model_info(predictor: Predictor) -> dict[str, str]:
    return {
        "name": predictor.name,
        "backend": predictor.describe(),
        "bundle_sha256": predictor.bundle_sha256 or "",
        "classes": str(len(predictor.classes)),
    }


def create_app(
    model: Predictor | str | Path, config: ServeConfig | None = None, *, reference: ReferenceFactory | None = None
) -> FastAPI:
    """The FastAPI app for a bundle dir (opened with config.model) or a Predictor (borrowed, not closed).

    The model and the parity reference load now, so their errors surface before a port is bound; the
    batcher starts with the app's lifespan, and batcher, monitor and an owned Predictor stop with it.
    """
    config = config or ServeConfig()
    owns = not isinstance(model, Predictor)
    predictor = Predictor.from_options(model, config.model) if not isinstance(model, Predictor) else model
    try:
        monitor = monitor_for(predictor, config.parity, reference) if config.parity.enabled else None
    except BaseException:
        if owns:
            predictor.close()
        raise
    metrics = ServeMetrics(model_info(predictor), config.http.max_queue, monitor)
    state = ServeState(predictor, config, metrics, monitor, owns, decode_slots=asyncio.Semaphore(predictor.workers))
    app = FastAPI(title="edgeft serve", version=__version__, lifespan=_lifespan(state), docs_url=None, redoc_url=None)
    app.state.serve = state
    _add_error_handlers(app, state)
    _add_routes(app, state)
    app.add_middleware(_Guard, state=state)
    return app


class _Guard:
    """Outermost ASGI layer: enforces the body limit while reading, counts and times every response by
    endpoint and status, and turns any crash into a 500 JSON (the server keeps running)."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app = app
        self.state = state

    def _limited(self, scope: dict, receive: Callable) -> Callable:
        limit = self.state.config.http.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise HTTPException(
                    413, f"request body is {int(declared)} bytes; the limit is {limit} bytes (--max-body-mb)"
                )
            message = await receive()
            received += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if received > limit:
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes (--max-body-mb)")
            return message

        return limited_receive

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status, started = 500, False

        async def observed_send(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, self._limited(scope, receive), observed_send)
        except ClientDisconnect:
            status = 499  # nginx's "client closed request": nobody is left to answer
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not started:
                await self._internal_error(send, exc)
        finally:
            endpoint = path if path in ENDPOINTS else "other"
            self.state.metrics.observe_request(endpoint, status, time.perf_counter() - t0)

    async def _internal_error(self, send: Callable, exc: Exception) -> None:
        self.state.metrics.errors.labels("internal").inc()
        body = json.dumps({"error": "internal", "message": f"internal server error ({type(exc).__name__})"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        with contextlib.suppress(Exception):  # the client may be gone too
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
