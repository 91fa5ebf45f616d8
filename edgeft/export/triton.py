"""A Triton Inference Server model repository built from the bundle's accepted artifacts.

triton/<name>_onnx (onnxruntime backend), <name>_openvino (openvino backend) and <name>_tensorrt
(tensorrt_plan, when a plan was built): each has config.pbtxt, 1/<model file(s)> and labels.txt. Also a
small parser for the protobuf text-format subset config.pbtxt uses, so configs are checked without tritonclient.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError
from edgeft.export.context import Built, ExportContext
from edgeft.export.onnx_export import INPUT_NAME, OUTPUT_NAME
from edgeft.export.registry import ExportFormat, register
from edgeft.export.tensorrt_build import PROFILE

DIR = "triton"
MAX_BATCH = PROFILE["max"]
PREFERRED_BATCH = (8, 16)
QUEUE_DELAY_US = 2000
# (model suffix, backend/platform key, value, instance kind, artifact preference, file names in 1/)
TARGETS = (
    ("onnx", "backend", "onnxruntime", "KIND_CPU", ("onnx-int8-cpu", "onnx-int8", "onnx-fp32"), ("model.onnx",)),
    (
        "openvino",
        "backend",
        "openvino",
        "KIND_CPU",
        ("openvino-int8", "openvino-int8-qdq", "openvino-fp32"),
        ("model.xml", "model.bin"),
    ),
    ("tensorrt", "platform", "tensorrt_plan", "KIND_GPU", ("tensorrt-int8", "tensorrt-fp16"), ("model.plan",)),
)


def model_prefix(name: str) -> str:
    """A Triton-safe model name prefix from the run's name."""
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower()
    return safe or "model"


def config_text(model: str, key: str, value: str, kind: str, input_size: int, num_classes: int, artifact: str) -> str:
    return f"""# written by edgeft export from bundle artifact {artifact}
name: "{model}"
{key}: "{value}"
max_batch_size: {MAX_BATCH}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, {input_size}, {input_size} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(str(b) for b in PREFERRED_BATCH)} ]
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
parameters {{
  key: "edgeft_artifact"
  value: {{ string_value: "{artifact}" }}
}}
"""


def write_repository(ctx: ExportContext, accepted: list[Built]) -> list[str]:
    """Write triton/ from the accepted artifacts; returns the model names written."""
    by_name = {b.name: b for b in accepted}
    prefix = model_prefix(ctx.manifest.name)
    written = []
    for suffix, key, value, kind, preference, names in TARGETS:
        art = next((by_name[n] for n in preference if n in by_name), None)
        if art is None:
            continue
        model = f"{prefix}_{suffix}"
        root = ctx.work / DIR / model
        (root / "1").mkdir(parents=True, exist_ok=True)
        for src, dst in zip(art.files(), names, strict=True):
            shutil.copyfile(ctx.work / src, root / "1" / dst)
        (root / "labels.txt").write_text("".join(f"{c}\n" for c in ctx.classes))
        text = config_text(model, key, value, kind, ctx.spec.input_size, len(ctx.classes), art.name)
        (root / "config.pbtxt").write_text(text)
        written.append(model)
    return written


def build(ctx: ExportContext) -> None:
    """Packaging step: runs after evaluation, over the artifacts that passed."""
    ctx.step("Triton model repository")
    models = write_repository(ctx, ctx.accepted)
    if not models:
        ctx.note("triton: no accepted artifact to package")
    ctx.packages["triton"] = models


# ---- protobuf text format (the subset config.pbtxt uses) -------------------------------------------------
_PUNCT = "{}[]:,<>;"


def _tokens(text: str) -> list[str]:
    """Split text-format protobuf into tokens: punctuation, quoted strings (kept quoted), bare words."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in _PUNCT:
            out.append(c)
            i += 1
        elif c in "\"'":
            j, buf = i + 1, [c]
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j : j + 2])
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= n:
                raise EdgeftError("unterminated string in pbtxt", fix="close the quote")
            out.append("".join(buf) + c)
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _PUNCT and text[j] not in "#\"'":
                j += 1
            out.append(text[i:j])
            i = j
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _unescape(body: str) -> str:
    """C-style escapes of protobuf text strings (UTF-8 text passes through untouched)."""
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _scalar(tok: str) -> Any:
    if tok[0] in "\"'":
        return _unescape(tok[1:-1])
    if tok in ("true", "True"):
        return True
    if tok in ("false", "False"):
        return False
    for cast in (int, float):
        try:
            return cast(tok)
        except ValueError:
            pass
    return tok  # enum identifier, e.g. TYPE_FP32


class _Parser:
    def __init__(self, tokens: list[str]):
        self.toks, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise EdgeftError(
                f"pbtxt: expected {expected or 'a token'} at token {self.pos}, got {tok!r}", fix="fix the config"
            )
        self.pos += 1
        return tok

    def message(self, end: str | None) -> dict:
        msg: dict[str, Any] = {}
        while self.peek() != end:
            if self.peek() is None:
                raise EdgeftError(f"pbtxt: missing {end!r}", fix="balance the braces")
            key = self.take()
            if not (key[0].isalpha() or key[0] == "_"):
                raise EdgeftError(f"pbtxt: expected a field name, got {key!r}", fix="fix the config")
            if self.peek() == ":":
                self.take()
            value = self.value()
            if key in msg:
                prev = msg[key] if isinstance(msg[key], list) else [msg[key]]
                msg[key] = prev + (value if isinstance(value, list) else [value])
            else:
                msg[key] = value
            if self.peek() in (",", ";"):
                self.take()
        return msg

    def value(self) -> Any:
        tok = self.take()
        if tok in ("{", "<"):
            body = self.message("}" if tok == "{" else ">")
            self.take()
            return body
        if tok == "[":
            items = []
            while self.peek() != "]":
                items.append(self.value())
                if self.peek() == ",":
                    self.take()
            self.take("]")
            return items
        if tok in _PUNCT:
            raise EdgeftError(f"pbtxt: unexpected {tok!r}", fix="fix the config")
        return _scalar(tok)


def parse_pbtxt(text: str) -> dict:
    """Parse protobuf text format into dicts/lists/scalars; a repeated field becomes a list."""
    parser = _Parser(_tokens(text))
    msg = parser.message(None)
    return msg


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def read_config(path: str | Path) -> dict:
    return parse_pbtxt(Path(path).read_text())


register(ExportFormat("triton", "package", lambda: None, build))
