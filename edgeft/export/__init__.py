"""Export stage: run dir -> bundle (ONNX FP32/INT8, OpenVINO IR, TensorRT plans, Triton repository).

`build_bundle` is imported lazily so `import edgeft.export` stays light (no torch/onnx until used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeft.export.bundle import ExportResult, build_bundle
    from edgeft.export.qdq_check import check_qdq_for_tensorrt

__all__ = ["ExportResult", "build_bundle", "check_qdq_for_tensorrt"]


def __getattr__(name: str) -> Any:
    if name in ("build_bundle", "ExportResult"):
        from edgeft.export import bundle

        return getattr(bundle, name)
    if name == "check_qdq_for_tensorrt":
        from edgeft.export.qdq_check import check_qdq_for_tensorrt

        return check_qdq_for_tensorrt
    raise AttributeError(name)
