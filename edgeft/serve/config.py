"""The one settings object of `edgeft serve` / `edgeft predict`: built once by the CLI, passed down whole.

`ServeConfig` groups what each part needs (the model, the parity monitor, the stream loop, the HTTP server), so
no layer threads a dozen keyword arguments through to the next. Values are validated here, once; an invalid
value is an EdgeftError naming the command-line option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeft.core.errors import EdgeftError


def _flag(name: str) -> dict[str, str]:
    return {"flag": name}


class Options(BaseModel):
    """Frozen, strict settings: an unknown name fails at once instead of being ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class PredictOptions(Options):
    """Which artifact runs and how predictions are shaped."""

    backend: str = Field("auto", json_schema_extra=_flag("--backend"))
    precision: str = Field("fp32", json_schema_extra=_flag("--precision"))
    batch_size: int = Field(8, ge=1, json_schema_extra=_flag("--batch-size"))
    topk: int = Field(5, ge=1, json_schema_extra=_flag("--topk"))
    workers: int | None = Field(None, ge=1, json_schema_extra=_flag("--workers"))
    verify: bool = True
    fast_preprocess: bool = Field(False, json_schema_extra=_flag("--fast-preprocess"))
    unknown_below: float | None = Field(None, ge=0.0, le=1.0, json_schema_extra=_flag("--unknown-below"))


class ParityOptions(Options):
    """The online parity monitor: which share of inputs is re-run through the FP32 reference, and when to alert."""

    sample: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra=_flag("--parity-sample"))
    alert_below: float = Field(0.98, ge=0.0, le=1.0, json_schema_extra=_flag("--parity-alert"))
    window: int = Field(200, ge=1, json_schema_extra=_flag("--parity-window"))
    min_samples: int = Field(50, ge=1, json_schema_extra=_flag("--parity-min-samples"))
    queue_size: int = Field(8, ge=1)
    seed: int = Field(0, json_schema_extra=_flag("--seed"))

    @property
    def enabled(self) -> bool:
        return self.sample > 0


class StreamOptions(Options):
    """--camera / --source: outputs, stopping and reconnecting."""

    jsonl: str | None = Field(None, json_schema_extra=_flag("--jsonl"))
    human: bool = False  # a short line per frame on stdout (at a terminal); JSONL only with --jsonl
    save: Path | None = Field(None, json_schema_extra=_flag("--save"))
    max_frames: int | None = Field(None, ge=1, json_schema_extra=_flag("--max-frames"))
    reconnect: bool | None = Field(None, json_schema_extra=_flag("--reconnect"))
    max_retries: int = Field(5, ge=0, json_schema_extra=_flag("--max-retries"))
    backoff_s: float = Field(0.5, gt=0.0)
    max_backoff_s: float = Field(8.0, gt=0.0)
    prefetch: int = Field(16, ge=1)


class HttpOptions(Options):
    """--http: load shedding and limits."""

    max_queue: int = Field(64, ge=1, json_schema_extra=_flag("--max-queue"))
    max_wait_ms: float = Field(5.0, ge=0.0, json_schema_extra=_flag("--max-wait-ms"))
    max_body_mb: float = Field(10.0, gt=0.0, json_schema_extra=_flag("--max-body-mb"))
    max_pixels_mp: float = Field(40.0, gt=0.0, json_schema_extra=_flag("--max-pixels-mp"))
    request_timeout_s: float = Field(30.0, gt=0.0, json_schema_extra=_flag("--request-timeout"))
    read_timeout_s: float = Field(15.0, gt=0.0, json_schema_extra=_flag("--read-timeout"))
    keep_alive_s: float = Field(5.0, gt=0.0)
    max_connections: int = Field(256, ge=1, json_schema_extra=_flag("--max-connections"))
    retry_after_s: int = Field(1, ge=0)

    @property
    def max_body_bytes(self) -> int:
        return max(1, int(self.max_body_mb * 2**20))

    @property
    def max_pixels(self) -> int:
        """Decoded pixels one request may cost (all its images together), checked from the headers."""
        return max(1, int(self.max_pixels_mp * 1e6))


class ServeConfig(Options):
    """Everything `edgeft serve` and `edgeft predict` need besides the bundle and the input."""

    model: PredictOptions = Field(default_factory=PredictOptions)
    parity: ParityOptions = Field(default_factory=ParityOptions)
    stream: StreamOptions = Field(default_factory=StreamOptions)
    http: HttpOptions = Field(default_factory=HttpOptions)
    status_every_s: float = Field(5.0, ge=0.0, json_schema_extra=_flag("--status-every"))

    @classmethod
    def build(cls, **values: Any) -> ServeConfig:
        """Validate settings (nested groups as dicts or Options); an invalid value names its option."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise options_error(cls, exc) from None


def _flag_of(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The command-line option for a validation error's location, e.g. ('model', 'batch_size') -> --batch-size."""
    name = ".".join(str(p) for p in loc)
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:  # an unknown setting: name it as given
            return str(part)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        name = str(extra.get("flag", part))
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return name


def options_error(model: type[BaseModel], exc: ValidationError) -> EdgeftError:
    """One paragraph for the first invalid option: '--batch-size: input should be greater than or equal to 1 (got 0)'."""
    first = exc.errors()[0]
    flag = _flag_of(model, tuple(first["loc"]))
    message = first["msg"][:1].lower() + first["msg"][1:]
    return EdgeftError(f"{flag}: {message} (got {first.get('input')!r})", fix=f"pass a valid value to {flag}")
