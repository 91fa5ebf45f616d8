"""A small registry of export formats: each format module registers how to build and how to run its artifacts."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.export.context import Built, ExportContext

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExportFormat:
    """stage "engine" writes model files that are then evaluated; "package" repackages the accepted ones."""

    name: str
    stage: str
    unavailable: Callable[[], str | None]  # why this machine cannot build it, or None
    build: Callable[[ExportContext], None]
    runner: Callable[[ExportContext, Built], Runner] | None = None
    always: bool = False  # built even when not asked for (the ONNX reference)


FORMATS: dict[str, ExportFormat] = {}
MODULES = (
    "edgeft.export.onnx_export",
    "edgeft.export.openvino_ir",
    "edgeft.export.tensorrt_build",
    "edgeft.export.triton",
)


def register(fmt: ExportFormat) -> ExportFormat:
    FORMATS[fmt.name] = fmt
    return fmt


def formats() -> dict[str, ExportFormat]:
    """All formats, in build order (importing a format module registers it; engines are imported lazily)."""
    for mod in MODULES:
        importlib.import_module(mod)
    return {name: FORMATS[name] for name in ("onnx", "openvino", "tensorrt", "triton") if name in FORMATS}


def resolve(requested: list[str] | None, log: Callable[[str], None]) -> list[ExportFormat]:
    """The formats to build: the asked ones (or all this machine can build), ONNX always; skips say why in one line."""
    known = formats()
    if requested is not None:
        unknown = [f for f in requested if f not in known]
        if unknown:
            raise EdgeftError(
                f"unknown format(s) {unknown}; known formats are {list(known)}",
                fix="e.g. --formats onnx,openvino,triton",
            )
    chosen = []
    for name, fmt in known.items():
        if requested is not None and name not in requested and not fmt.always:
            continue
        why = fmt.unavailable()
        if why:
            log(f"{name}: skipped ({why})")
            continue
        chosen.append(fmt)
    return chosen
