"""Export stage: run dir -> bundle (ONNX FP32/INT8, OpenVINO IR, TensorRT plans, Triton repository).

The names below are imported lazily so `import edgeft.export` stays light (no torch/onnx until used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeft.export.bundle import ExportResult, build_bundle
    from edgeft.export.context import ExportOptions
    from edgeft.export.qdq_check import check_qdq_for_tensorrt

__all__ = ["ExportOptions", "ExportResult", "build_bundle", "check_qdq_for_tensorrt"]

_WHERE = {
    "build_bundle": "edgeft.export.bundle",
    "ExportResult": "edgeft.export.bundle",
    "ExportOptions": "edgeft.export.context",
    "check_qdq_for_tensorrt": "edgeft.export.qdq_check",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
