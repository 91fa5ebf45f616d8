"""ONNX Runtime on CPU, CUDA or its TensorRT execution provider: runs .onnx files (FP32 and Q/DQ INT8).

Every ONNX Runtime session edgeft creates (feature cache, export evaluation, parity, bench, serve) is made
here, with the same options.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.files import cache_root
from edgeft.engines.base import Engine, has_module, import_engine, physical_cores, register_engine, run_in_static_chunks

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@functools.lru_cache(maxsize=1)
def providers() -> tuple[str, ...]:
    if not has_module("onnxruntime"):
        return ()
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


@register_engine
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime session with full graph optimisation; intra-op threads = physical cores, no spinning."""

    name = "onnxruntime"
    formats = ("onnx",)
    default_device = "cpu"
    option_names = ("threads", "spin", "trt_cache_dir")
    distributions = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")

    @classmethod
    def normalize_device(cls, device: str | None) -> str:
        return (device or cls.default_device).lower()

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("onnxruntime")

    @classmethod
    def devices(cls) -> list[str]:
        have = providers()
        return [d for d, p in ORT_PROVIDERS.items() if p in have]

    def threads(self) -> int:
        return int(self.options.get("threads") or physical_cores())

    def numerics(self) -> dict[str, Any]:
        # the thread count decides how work is split; spinning and the TensorRT cache dir change timing only
        return {**super().numerics(), "threads": self.threads()}

    def session_options(self, ort: Any) -> Any:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Idle intra-op threads spin by default and steal the cores the decode threads need: off unless spin=True
        # (measured: +13% e2e throughput for EfficientNet-Lite0 on a busy 2-core CPU, engine speed unchanged).
        spin = bool(self.options.get("spin", False))
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return opts

    def _providers(self, available: list[str]) -> list[Any]:
        wanted = ORT_PROVIDERS[self.device]
        chosen: list[Any] = []
        if self.device == "tensorrt":
            cache = Path(self.options.get("trt_cache_dir") or cache_root() / "ort-trt")
            cache.mkdir(parents=True, exist_ok=True)
            trt_options = {
                "trt_fp16_enable": self.precision in ("fp16", "int8"),
                "trt_int8_enable": self.precision == "int8",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
            }
            chosen.append((wanted, trt_options))
        if self.device in ("tensorrt", "cuda") and "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
        chosen.append("CPUExecutionProvider")
        return chosen

    def _load(self) -> None:
        ort = import_engine("onnxruntime", self.spec, "onnxruntime (or onnxruntime-gpu)")
        if self.device not in ORT_PROVIDERS:
            raise EdgeftError(
                f"unknown onnxruntime device {self.device!r}; use one of {sorted(ORT_PROVIDERS)}",
                fix="e.g. --backend onnxruntime:cpu",
            )
        available = ort.get_available_providers()
        if ORT_PROVIDERS[self.device] not in available:
            raise EdgeftError(
                f"onnxruntime provider {ORT_PROVIDERS[self.device]} is not available here; available: {available}",
                fix="install onnxruntime-gpu (with matching CUDA/TensorRT) or use --backend onnxruntime:cpu",
            )
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=self.session_options(ort), providers=self._providers(available)
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EdgeftError(
                f"onnxruntime cannot load the model ({type(exc).__name__}: {exc})",
                path=self.model_path,
                fix="re-export the model with `edgeft export`",
            ) from None
        self.check_classes(self.session.get_modelmeta().custom_metadata_map.get("edgeft.classes_sha256"))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EdgeftError(
                f"the model has {len(inputs)} inputs; edgeft models take exactly one",
                path=self.model_path,
                fix="re-export the model",
            )
        self.input_name = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.run_output = self.output_name if self.output_name in outputs else outputs[0]
        dim0 = inputs[0].shape[0]
        self.static_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self.static_batch and batch.shape[0] != self.static_batch:
            return run_in_static_chunks(batch, self.static_batch, self._run)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.run_output], {self.input_name: batch})[0]

    def _close(self) -> None:
        self.session = None
