"""Export-specific user-facing errors (all EdgeftError: the CLI prints them without a traceback)."""

from __future__ import annotations

from edgeft.errors import EdgeftError


class ExportParityError(EdgeftError):
    """The FP32 ONNX graph does not reproduce the PyTorch model: nothing is written."""


class ExportRefusedError(EdgeftError):
    """The output directory holds something this export must not overwrite."""


class ExportAccuracyError(EdgeftError):
    """A reduced-precision artifact lost more test accuracy than --max-drop allows."""
