"""The export formats, in build order: how each is built and why this machine may not be able to build it.

"engine" formats write model files that the gate then judges; "package" formats repackage the accepted ones.
The FP32 ONNX is not a format here: it is the bundle's reference and is always exported first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeft.core.errors import EdgeftError
from edgeft.export import onnx_int8, openvino_ir, tensorrt_build, triton
from edgeft.export.context import ExportContext


@dataclass(frozen=True)
class ExportFormat:
    name: str
    stage: str  # "engine" | "package"
    unavailable: Callable[[], str | None]  # why this machine cannot build it, or None
    build: Callable[[ExportContext], None]
    always: bool = False  # built even when not asked for (the INT8 Q/DQ ONNX feeds OpenVINO and TensorRT)


def _available() -> str | None:
    return None


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("onnx", "engine", _available, onnx_int8.build, always=True),
    ExportFormat("openvino", "engine", openvino_ir.unavailable, openvino_ir.build),
    ExportFormat("tensorrt", "engine", tensorrt_build.unavailable, tensorrt_build.build),
    ExportFormat("triton", "package", _available, triton.build),
)


def format_names() -> list[str]:
    return [f.name for f in FORMATS]


def resolve(requested: list[str] | tuple[str, ...] | None, log: Callable[[str], None]) -> list[ExportFormat]:
    """The formats to build: the asked ones (or all this machine can build), ONNX always; skips say why in one line."""
    known = format_names()
    if requested is not None:
        unknown = [f for f in requested if f not in known]
        if unknown:
            raise EdgeftError(
                f"unknown format(s) {unknown}; known formats are {known}",
                fix="e.g. --formats onnx,openvino,triton",
            )
    chosen = []
    for fmt in FORMATS:
        if requested is not None and fmt.name not in requested and not fmt.always:
            continue
        why = fmt.unavailable()
        if why:
            log(f"{fmt.name}: skipped ({why})")
            continue
        chosen.append(fmt)
    return chosen
