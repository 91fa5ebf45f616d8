"""Serving: `edgeft predict`, live camera/stream/file inference, an HTTP API, the online parity monitor, bench.

Everything runs images through one `Predictor` and answers with one `Prediction` schema. Heavy optional
dependencies (OpenCV, FastAPI, uvicorn, prometheus_client) are imported by the modules that use them
(`sources`, `http`, `metrics`, `server`), so the predictor and stream path work without the `serve` extra.
"""

from __future__ import annotations

from edgeft.serve.batcher import DynamicBatcher, QueueFull
from edgeft.serve.config import HttpOptions, ParityOptions, PredictOptions, ServeConfig, StreamOptions
from edgeft.serve.predictor import Predictor
from edgeft.serve.schema import FrameRecord, Label, Prediction, PredictResponse

__all__ = [
    "DynamicBatcher",
    "FrameRecord",
    "HttpOptions",
    "Label",
    "ParityOptions",
    "PredictOptions",
    "PredictResponse",
    "Prediction",
    "Predictor",
    "QueueFull",
    "ServeConfig",
    "StreamOptions",
]
