"""Engines: ONNX Runtime, OpenVINO, TensorRT and torch behind one load -> infer -> close lifecycle.

Torch-free: importing this package (and every non-torch engine module) needs only numpy; each engine
imports its runtime package when a model is loaded.
"""

from __future__ import annotations

import importlib

from edgeft.engines.base import ENGINES, Engine, engine_class, has_module, physical_cores, register_engine

ENGINE_MODULES = ("onnxruntime", "openvino", "tensorrt", "torch")


def load_all() -> None:
    """Register every engine class (importing their modules imports no engine package)."""
    for name in ENGINE_MODULES:
        importlib.import_module(f"edgeft.engines.{name}")


__all__ = ["ENGINES", "Engine", "engine_class", "has_module", "load_all", "physical_cores", "register_engine"]
