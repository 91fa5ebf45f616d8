"""THE prediction schema, and the documents built around it.

`edgeft predict` prints one `Prediction` per line, the stream loop writes `FrameRecord`s (a Prediction plus
frame facts) and the HTTP API answers `PredictResponse` (Predictions plus request facts): one shape for a
prediction everywhere, validated by pydantic and published in the OpenAPI schema.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Label(Schema):
    """One class and its probability."""

    label: str
    prob: float


class Prediction(Schema):
    """One input's result. When the input could not be decoded, `error`/`reason` are set and label is null."""

    source: str = Field(description="file path, upload name, or '<kind #position>' for in-memory inputs")
    label: str | None = Field(None, description="top-1 class, or 'unknown' when its probability is below the threshold")
    index: int | None = Field(None, description="top-1 class index in bundle.json's class list (also when unknown)")
    unknown: bool = Field(
        False, description="top-1 probability below the unknown-species threshold; top-k still listed"
    )
    prob: float | None = Field(None, description="top-1 probability (softmax of logits / calibrated temperature)")
    topk: list[Label] = Field(default_factory=list, description="the k most probable classes, best first")
    error: str | None = Field(None, description="why the input could not be classified")
    reason: str | None = Field(None, description="short tag of the error, e.g. not_an_image, truncated, empty")
    logits: list[float] | None = Field(None, description="raw model outputs (only when asked for)")

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self, with_logits: bool = False) -> str:
        """One compact JSON line; logits only on request (they are large and rarely needed)."""
        return self.model_dump_json(exclude=None if with_logits else {"logits"})


class FrameRecord(Schema):
    """One JSONL line of `edgeft serve --camera/--source`: the frame's facts and its Prediction."""

    ts: str = Field(description="capture time, ISO 8601 UTC")
    stream: str = Field(description="the source: camera:N, a redacted URL, a video or folder name")
    frame: int = Field(description="frame index, counting on across reconnects")
    session: int = Field(1, description="connection number of a live source (2 after the first reconnect)")
    latency_ms: float | None = Field(None, description="frame ready -> prediction done")
    infer_ms: float | None = Field(None, description="model time of the batch the frame was in")
    backend: str
    prediction: Prediction

    def to_json(self) -> str:
        return self.model_dump_json(exclude={"prediction": {"logits"}})


class PredictResponse(Schema):
    """POST /predict."""

    model: str
    backend: str
    predictions: list[Prediction]
    latency_ms: float


class HealthResponse(Schema):
    """GET /health: what is served, and how busy the server is."""

    status: str
    model: str
    classes: int
    backend: str
    precision: str | None
    bundle_sha256: str | None
    inflight: int
    max_queue: int
    parity_agreement: float | None = None
    parity_alert: bool | None = None
    uptime_s: float


class ErrorItem(Schema):
    """One unreadable image of a request."""

    index: int
    source: str
    reason: str
    message: str


class ErrorBody(Schema):
    """Every error response: a machine-readable `error` code and a sentence for people."""

    error: str
    message: str
    reason: str | None = None
    items: list[ErrorItem] | None = None
