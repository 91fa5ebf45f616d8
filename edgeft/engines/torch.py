"""The training-time torch model of a run dir (eager FP32): the reference every exported artifact is compared with.

torch and the model code are imported in `load()`, so a device without torch can import this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.engines.base import Engine, has_module, import_engine, register_engine


@register_engine
class TorchEngine(Engine):
    """model_path is a run dir (model.json + model.safetensors); sha256 of the weights is checked on load."""

    name = "torch"
    formats = ("torch",)
    default_device = "cpu"
    option_names = ("threads",)

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("torch") and has_module("safetensors")

    @classmethod
    def devices(cls) -> list[str]:
        """cpu, plus cuda when torch is already loaded and sees a GPU: listing devices must not import torch."""
        if not cls.is_installed():
            return []
        torch = sys.modules.get("torch")
        return ["cpu", "cuda"] if torch is not None and torch.cuda.is_available() else ["cpu"]

    def model_files(self) -> list[Path]:
        return [self.model_path / "model.safetensors"]

    def _load(self) -> None:
        self.torch: Any = import_engine("torch", self.spec, "'edgeft[train]'")
        try:
            from edgeft.models.classifier import load_run
        except ImportError as exc:
            raise EdgeftError(
                f"the torch backend needs edgeft's model code ({exc})",
                fix="pip install 'edgeft[train]', or use an exported backend (onnxruntime, openvino)",
            ) from None
        if self.options.get("threads"):
            self.torch.set_num_threads(int(self.options["threads"]))
        self.model, self.manifest = load_run(self.model_path)
        self.model.eval().to(self.device)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def _close(self) -> None:
        self.model = None
