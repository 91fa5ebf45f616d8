"""TensorRT plans (TRT 10/11 tensor API), with cuda-python for device memory.

A plan is tied to the GPU architecture and the TensorRT version it was built with: the engine refuses a
plan whose recorded fingerprint does not fit this machine instead of crashing inside TensorRT.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.engines.base import Engine, has_module, import_engine, register_engine


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


def trt_fingerprint_problems(
    plan_info: dict, machine_compute_capability: str | None, machine_trt_version: str | None
) -> list[str]:
    """Why a serialized TensorRT plan cannot run on this machine (empty list = it can).

    Plans are specific to the GPU architecture (SM compute capability) and the exact TensorRT
    version, unless built hardware-compatible (info "hardware_compatibility": "ampere+") or
    version-compatible (info "version_compatible": true -> same major, runtime not older).
    """
    problems = []
    want_cc = plan_info.get("compute_capability")
    if machine_compute_capability is None:
        problems.append("no CUDA GPU found on this machine")
    elif want_cc is None:
        problems.append("the plan does not record the compute capability it was built for")
    else:
        have, want = _version_tuple(machine_compute_capability)[:2], _version_tuple(want_cc)[:2]
        hw = str(plan_info.get("hardware_compatibility", "none")).lower()
        if re.sub(r"[^a-z]", "", hw) in ("ampere", "ampereplus"):
            if have < (8, 0):
                problems.append(
                    f"plan is hardware-compatible for Ampere+ (SM >= 8.0) but this GPU is SM {machine_compute_capability}"
                )
        elif have != want:
            problems.append(f"plan was built for SM {want_cc}, this GPU is SM {machine_compute_capability}")
    want_trt = plan_info.get("tensorrt")
    if machine_trt_version is None:
        problems.append("TensorRT is not installed")
    elif want_trt is None:
        problems.append("the plan does not record the TensorRT version it was built with")
    else:
        have_v, want_v = _version_tuple(machine_trt_version), _version_tuple(want_trt)
        if plan_info.get("version_compatible"):
            if have_v[:1] != want_v[:1] or have_v < want_v:
                problems.append(
                    f"version-compatible plan built with TensorRT {want_trt} needs TensorRT {want_v[0]}.x >= {want_trt}, "
                    f"this machine has {machine_trt_version}"
                )
        elif have_v != want_v:
            problems.append(f"plan was built with TensorRT {want_trt}, this machine has TensorRT {machine_trt_version}")
    return problems


def cuda_compute_capability(device: int = 0) -> str | None:
    """'8.9' for the given GPU, via cuda-python (no torch needed), else torch if present; None without a GPU."""
    if has_module("cuda.bindings.runtime") or has_module("cuda.cudart"):
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart  # cuda-python < 12.6
            err, major = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device)
            err2, minor = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device)
            if int(err) == 0 and int(err2) == 0:
                return f"{major}.{minor}"
            return None
        except Exception:
            pass
    if has_module("torch"):
        try:
            import torch

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability(device)
                return f"{major}.{minor}"
        except Exception:
            return None
    return None


def tensorrt_version() -> str | None:
    """The installed TensorRT version (half of a plan's fingerprint), None when it is not installed."""
    if not has_module("tensorrt"):
        return None
    try:
        import tensorrt as trt

        return str(trt.__version__)
    except Exception:
        return None


@register_engine
class TensorRTEngine(Engine):
    """A serialized TensorRT plan (TRT 10/11 tensor API), refused unless its GPU/TRT fingerprint matches here."""

    name = "tensorrt"
    formats = ("tensorrt",)
    default_device = ""

    def computes_on_cpu(self) -> bool:
        return False

    option_names = ("fingerprint",)  # the plan's build fingerprint (bundle.json artifact info)
    distributions = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-bindings", "tensorrt-cu13-bindings")

    @classmethod
    def library_version(cls) -> str:
        # JetPack installs TensorRT's Python module without pip metadata
        return super().library_version() or f"tensorrt=={tensorrt_version() or ''}"

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("tensorrt")

    @classmethod
    def devices(cls) -> list[str]:
        return [""] if cls.is_installed() and cuda_compute_capability() is not None else []

    def fingerprint_problems(self) -> list[str]:
        """Why this plan cannot run on this machine (empty = it can)."""
        return trt_fingerprint_problems(
            self.options.get("fingerprint") or {}, cuda_compute_capability(), tensorrt_version()
        )

    def _load(self) -> None:
        trt = import_engine("tensorrt", self.spec, "tensorrt")
        problems = self.fingerprint_problems()
        if problems:
            raise EdgeftError(
                "TensorRT plan does not fit this machine: " + "; ".join(problems),
                path=self.model_path,
                fix="rebuild the plan on this device with `edgeft export --tensorrt`, or use --backend onnxruntime",
            )
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart
            except ImportError:
                raise EdgeftError(
                    "the tensorrt backend needs cuda-python for device memory",
                    fix="pip install cuda-python",
                ) from None
        self.cudart = cudart
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self.engine is None:
            raise EdgeftError(
                "TensorRT could not deserialize the plan", path=self.model_path, fix="rebuild the plan on this device"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.output_name = self.output_name if self.output_name in outputs else outputs[0]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if shape[0] == -1:  # dynamic batch: the optimization profile bounds it
            low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
        else:
            self.min_batch = self.max_batch = int(shape[0])
        # strongly typed FP16 plans may take/return half tensors: convert at the boundary
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.stream = self._check(cudart.cudaStreamCreate())
        row = int(np.prod(self.input_shape)) if self.input_shape else int(np.prod(shape[1:]))
        self.out_width = self.num_outputs or int(self.engine.get_tensor_shape(self.output_name)[-1])
        in_bytes = self.max_batch * row * self.in_dtype.itemsize
        out_bytes = self.max_batch * self.out_width * self.out_dtype.itemsize
        self.d_input = self._check(cudart.cudaMalloc(in_bytes))
        self.d_output = self._check(cudart.cudaMalloc(out_bytes))
        self.context.set_tensor_address(self.input_name, int(self.d_input))
        self.context.set_tensor_address(self.output_name, int(self.d_output))
        self.lock = threading.Lock()

    def _check(self, result: tuple) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise EdgeftError(f"CUDA call failed with error {err}", fix="check the GPU driver (nvidia-smi)")
        return rest[0] if rest else None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] > self.max_batch:
            return np.concatenate(
                [self._infer(batch[i : i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)]
            )
        with self.lock:  # one execution context and one pair of device buffers
            return self._execute(batch)

    def _execute(self, batch: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        n = batch.shape[0]
        if n < self.min_batch:  # pad up to the profile's minimum, drop the padding rows afterwards
            pad = np.zeros((self.min_batch - n, *batch.shape[1:]), batch.dtype)
            return self._execute(np.concatenate([batch, pad]))[:n]
        batch = np.ascontiguousarray(batch, dtype=self.in_dtype)
        out = np.empty((n, self.out_width), self.out_dtype)
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(cudart.cudaMemcpyAsync(self.d_input, batch.ctypes.data, batch.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise EdgeftError("TensorRT execution failed", path=self.model_path, fix="rebuild the plan on this device")
        self._check(cudart.cudaMemcpyAsync(out.ctypes.data, self.d_output, out.nbytes, d2h, self.stream))
        self._check(cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32, copy=False)

    def _close(self) -> None:
        for ptr in (getattr(self, "d_input", None), getattr(self, "d_output", None)):
            if ptr is not None:
                self.cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
        self.d_input = self.d_output = self.stream = None
        self.context = self.engine = self.runtime = None
