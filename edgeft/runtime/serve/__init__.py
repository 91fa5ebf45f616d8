"""Serving: live camera/stream/file inference (`edgeft serve`), an HTTP API and an online parity monitor.

Heavy dependencies (OpenCV, FastAPI, uvicorn, prometheus_client) are imported where they are used; the HTTP
names load on first access, so the stream path works on a device without the `serve` extra.
"""

from __future__ import annotations

from typing import Any

from edgeft.runtime.serve.model import ServeModel, from_backend, from_predictor, open_model, topk_rows
from edgeft.runtime.serve.outputs import AnnotatedSaver, JsonlSink
from edgeft.runtime.serve.parity_monitor import ParityMonitor, bundle_reference
from edgeft.runtime.serve.sources import (
    Frame,
    FrameSource,
    PacedCapture,
    ReconnectPolicy,
    SourceOptions,
    default_open_capture,
    open_source,
)
from edgeft.runtime.serve.stream import StreamReport, StreamRunner

_HTTP_NAMES = ("BackgroundServer", "create_app", "parse_host_port")


def __getattr__(name: str) -> Any:
    """Lazy access to the HTTP names (importing them needs fastapi)."""
    if name in _HTTP_NAMES:
        from edgeft.runtime.serve import http

        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnnotatedSaver",
    "BackgroundServer",
    "Frame",
    "FrameSource",
    "JsonlSink",
    "PacedCapture",
    "ParityMonitor",
    "ReconnectPolicy",
    "ServeModel",
    "SourceOptions",
    "StreamReport",
    "StreamRunner",
    "bundle_reference",
    "create_app",
    "default_open_capture",
    "from_backend",
    "from_predictor",
    "open_model",
    "open_source",
    "parse_host_port",
    "topk_rows",
]
