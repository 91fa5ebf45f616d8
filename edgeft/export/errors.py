"""Export-specific user-facing errors (EdgeftError, exit code 2: nothing was written)."""

from __future__ import annotations

from edgeft.core.errors import EdgeftError


class ExportParityError(EdgeftError):
    """The FP32 ONNX graph does not reproduce the PyTorch model: nothing is written."""


class ExportRefusedError(EdgeftError):
    """The output directory holds something this export must not overwrite."""
