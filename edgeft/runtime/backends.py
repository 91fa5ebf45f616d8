"""Inference backends behind one small lifecycle: construct -> load() -> infer() -> close().

Every backend maps a float32 NCHW batch to float32 logits. Heavy engines (onnxruntime, openvino,
tensorrt, torch) are imported inside `load()`, so `import edgeft.runtime` works on a device that has
only numpy and one engine installed, and never imports torch.

Backend specs are strings: "onnxruntime", "onnxruntime:cpu", "onnxruntime:cuda", "onnxruntime:tensorrt",
"openvino", "openvino:CPU", "openvino:GPU", "tensorrt", "torch", or "auto".
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.manifest import Artifact, BundleManifest, sha256_file

PRECISIONS = ("fp32", "fp16", "int8")

# CPU preference per precision, measured with `edgeft bench` on a 2-core AMD EPYC Zen 4 (AVX-512 VNNI + BF16),
# EfficientNet-Lite0 + MLP head at 224x224 exported by `edgeft export`; engine img/s at batch 8:
#   fp32  onnxruntime 185            openvino 201   (busy machine, batch 1/8/32: ORT 72/66/67, OV 102/97/110)
#   int8  onnxruntime 416 (U8S8 "onnx-int8-cpu"), 137 (S8S8 Q/DQ "onnx-int8")    openvino 568 (NNCF)
#   fp16  openvino    403            (the fp16 IR computes in bf16 on this CPU; there is no fp16 ONNX artifact)
# OpenVINO is ahead for every precision (slightly for fp32, 1.4x for int8, more when the CPU is shared).
CPU_PREFERENCE: dict[str, tuple[str, ...]] = {
    "fp32": ("openvino:CPU", "onnxruntime:cpu"),
    "fp16": ("openvino:CPU", "onnxruntime:cpu"),
    "int8": ("openvino:CPU", "onnxruntime:cpu"),
}


def default_options(batch_size: int) -> dict[str, Any]:
    """Backend options suited to a batch size: OpenVINO's LATENCY hint for single images, THROUGHPUT otherwise."""
    return {"hint": "LATENCY" if batch_size <= 1 else "THROUGHPUT"}


def physical_cores() -> int:
    """Physical cores this process may use: SMT siblings slow small-batch CNN inference down."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    physical = None
    if importlib.util.find_spec("psutil") is not None:
        import psutil

        physical = psutil.cpu_count(logical=False)
    if not physical:
        logical = os.cpu_count() or 1
        physical = logical
    return max(1, min(allowed, physical))


def has_module(name: str) -> bool:
    """True when `name` is importable, without importing it (find_spec never executes the package)."""
    if name in sys.modules:  # already imported (or explicitly blocked with None)
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'openvino:CPU' -> ('openvino', 'CPU'); 'onnxruntime' -> ('onnxruntime', None)."""
    name, _, device = spec.strip().partition(":")
    return name.strip().lower(), (device.strip() or None)


class Backend:
    """Base class: one model artifact on one engine and device (Polygraphy-runner style lifecycle)."""

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    default_device: ClassVar[str] = ""
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        bundle_dir: str | Path,
        bundle: BundleManifest,
        artifact: Artifact,
        device: str | None = None,
        **options: Any,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.bundle = bundle
        self.artifact = artifact
        self.device = self.normalize_device(device)
        self.options = options
        self.input_size = int(bundle.preprocess_spec.input_size)
        self.num_classes = len(bundle.classes)
        self.loaded = False

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def normalize_device(cls, device: str | None) -> str:
        return device or cls.default_device

    @classmethod
    def is_installed(cls) -> bool:
        """True when the engine's Python package can be imported here (checked without importing it)."""
        raise NotImplementedError

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this engine can use on this machine (empty when not installed)."""
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.device}" if self.device else self.name

    @property
    def model_path(self) -> Path:
        return self.bundle_dir / self.artifact.path

    def used_options(self) -> tuple[str, ...]:
        """The option names this backend reads (others, e.g. an OpenVINO hint given to onnxruntime, are ignored)."""
        return self.option_names

    def model_bytes(self) -> int:
        """Bytes on disk of the artifact and its side files (e.g. the OpenVINO .bin)."""
        files = [self.bundle_dir / self.artifact.path, *(self.bundle_dir / p for p in self.artifact.extra_files)]
        return sum(f.stat().st_size for f in files if f.is_file())

    def describe(self) -> str:
        """Human-readable identity, e.g. 'openvino:CPU int8 (openvino-int8)'."""
        return f"{self.spec} {self.artifact.precision} ({self.artifact.name})"

    def load(self) -> Backend:
        """Create the engine session (idempotent); returns self so `open(...).load()` chains."""
        if not self.loaded:
            self._load()
            self.loaded = True
        return self

    def close(self) -> None:
        """Release the engine session and its memory; the object can be loaded again."""
        if self.loaded:
            self._close()
            self.loaded = False

    def __enter__(self) -> Backend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} loaded={self.loaded}>"

    # -- inference -------------------------------------------------------------------------------
    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """Refuse anything that is not (N, 3, S, S) float32: silent casts hide preprocessing bugs."""
        s = self.input_size
        expected = f"expected a (N, 3, {s}, {s}) float32 array (NCHW, preprocessed with the bundle's spec)"
        if not isinstance(batch, np.ndarray):
            raise EdgeftError(f"{self.spec}: got {type(batch).__name__}; {expected}", fix="pass a numpy array")
        if batch.dtype != np.float32:
            raise EdgeftError(
                f"{self.spec}: got dtype {batch.dtype}; {expected}",
                fix="use edgeft.runtime.preprocess.preprocess (it returns float32) or .astype(np.float32)",
            )
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise EdgeftError(
                f"{self.spec}: got shape {tuple(batch.shape)}; {expected}",
                fix="stack (3, S, S) images with np.stack, or add a batch axis with x[None]",
            )
        return np.ascontiguousarray(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, num_classes) float32 logits."""
        batch = self.check_batch(batch)
        if not self.loaded:
            raise EdgeftError(f"{self.describe()} is not loaded", fix="call .load() or use it as a context manager")
        if batch.shape[0] == 0:
            return np.zeros((0, self.num_classes), np.float32)
        return self.check_output(self._infer(batch), batch.shape[0])

    def check_output(self, out: np.ndarray, n: int) -> np.ndarray:
        """Logits must be (n, num_classes): anything else means the artifact and bundle.json disagree."""
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (n, self.num_classes):
            raise EdgeftError(
                f"{self.describe()} returned logits of shape {out.shape}, expected {(n, self.num_classes)}",
                path=self.model_path,
                fix="the artifact does not match bundle.json's classes; re-export the bundle",
            )
        return out

    def infer_many(self, batches: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Run several batches; engines with parallel requests (OpenVINO) overlap them."""
        return [self.infer(b) for b in batches]

    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        pass


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend reachable by its `name` in specs and `auto`."""
    BACKENDS[cls.name] = cls
    return cls


def backend_class(name: str) -> type[Backend]:
    """The registered class for an engine name, or an error listing the known ones."""
    if name not in BACKENDS:
        raise EdgeftError(
            f"unknown backend {name!r}; known backends are {sorted(BACKENDS)} (or 'auto')",
            fix="pick one of them, e.g. --backend onnxruntime:cpu",
        )
    return BACKENDS[name]


def _import_engine(module: str, backend: str, pip: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EdgeftError(
            f"backend {backend!r} needs the Python package {module!r}, which cannot be imported ({exc})",
            fix=f"pip install {pip}, or pick another backend (available here: {available_backends()})",
        ) from None


# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@functools.lru_cache(maxsize=1)
def _ort_providers() -> tuple[str, ...]:
    if not has_module("onnxruntime"):
        return ()
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


@register_backend
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on CPU, CUDA or its TensorRT execution provider; runs the .onnx artifacts (FP32 and Q/DQ INT8)."""

    name = "onnxruntime"
    formats = ("onnx",)
    default_device = "cpu"
    option_names = ("threads", "spin", "trt_cache_dir")

    @classmethod
    def normalize_device(cls, device: str | None) -> str:
        return (device or cls.default_device).lower()

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("onnxruntime")

    @classmethod
    def devices(cls) -> list[str]:
        providers = _ort_providers()
        return [d for d, p in ORT_PROVIDERS.items() if p in providers]

    def _load(self) -> None:
        ort = _import_engine("onnxruntime", self.spec, "onnxruntime (or onnxruntime-gpu)")
        if self.device not in ORT_PROVIDERS:
            raise EdgeftError(
                f"unknown onnxruntime device {self.device!r}; use one of {sorted(ORT_PROVIDERS)}",
                fix="e.g. --backend onnxruntime:cpu",
            )
        available = ort.get_available_providers()
        wanted = ORT_PROVIDERS[self.device]
        if wanted not in available:
            raise EdgeftError(
                f"onnxruntime provider {wanted} is not available here; available providers: {available}",
                fix="install onnxruntime-gpu (with matching CUDA/TensorRT) or use --backend onnxruntime:cpu",
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(self.options.get("threads") or physical_cores())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Idle intra-op threads spin by default and steal the cores the decode threads need: off unless spin=True
        # (measured: +13% e2e throughput for EfficientNet-Lite0 on a busy 2-core CPU, engine speed unchanged).
        spin = bool(self.options.get("spin", False))
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers: list[Any] = []
        if self.device == "tensorrt":
            cache = Path(self.options.get("trt_cache_dir") or Path.home() / ".cache" / "edgeft" / "ort-trt")
            cache.mkdir(parents=True, exist_ok=True)
            providers.append(
                (
                    wanted,
                    {
                        "trt_fp16_enable": self.artifact.precision in ("fp16", "int8"),
                        "trt_int8_enable": self.artifact.precision == "int8",
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                    },
                )
            )
        if self.device in ("tensorrt", "cuda") and "CUDAExecutionProvider" in available:
            providers.append("CUDAExecutionProvider")
        providers.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EdgeftError(
                f"onnxruntime cannot load the model ({type(exc).__name__}: {exc})",
                path=self.model_path,
                fix="re-export the bundle with `edgeft export`",
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = [i.name for i in inputs]
        self.input_name = self.bundle.input.get("name", "input")
        if self.input_name not in names:
            if len(names) != 1:
                raise EdgeftError(
                    f"model inputs {names} do not include {self.input_name!r} from bundle.json",
                    path=self.model_path,
                    fix="re-export the bundle",
                )
            self.input_name = names[0]
        out_names = [o.name for o in outputs]
        self.output_name = self.bundle.output.get("name", "logits")
        if self.output_name not in out_names:
            self.output_name = out_names[0]
        dim0 = next(i.shape[0] for i in inputs if i.name == self.input_name)
        self.static_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self.static_batch and batch.shape[0] != self.static_batch:
            return _run_in_static_chunks(batch, self.static_batch, self._run)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def _close(self) -> None:
        self.session = None


def _run_in_static_chunks(batch: np.ndarray, size: int, run) -> np.ndarray:
    """Feed a model exported with a fixed batch size: pad the last chunk, drop the padding rows."""
    outs = []
    for start in range(0, batch.shape[0], size):
        chunk = batch[start : start + size]
        n = chunk.shape[0]
        if n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(run(chunk))[:n])
    return np.concatenate(outs)


# ---------------------------------------------------------------------------------------------
# OpenVINO
# ---------------------------------------------------------------------------------------------
OV_HINTS = ("THROUGHPUT", "LATENCY", "CUMULATIVE_THROUGHPUT")


@functools.lru_cache(maxsize=1)
def _ov_devices() -> tuple[str, ...]:
    if not has_module("openvino"):
        return ()
    import openvino as ov

    try:
        return tuple(ov.Core().available_devices)
    except Exception:  # a broken plugin must not break `available_backends()`
        return ()


@register_backend
class OpenVinoBackend(Backend):
    """OpenVINO runtime on CPU/GPU/NPU/AUTO; runs the IR artifacts (FP32, FP16, INT8).

    hint="THROUGHPUT" (default) compiles several CPU streams; `infer` splits a batch across that many
    parallel requests and `infer_many` keeps all of them busy: best from batch 2 up, and under CPU
    contention. hint="LATENCY" compiles one stream using every core for each request: best for single
    images (Predictor picks it for batch_size=1, see `default_options`).

    The parallel requests are plain InferRequests (start_async + wait) rather than an AsyncInferQueue:
    with OpenVINO 2026.4, dropping an AsyncInferQueue right after wait_all() intermittently aborts the
    process (std::terminate from a still-joinable callback thread).
    """

    name = "openvino"
    formats = ("openvino",)
    default_device = "CPU"
    option_names = ("hint", "threads", "streams", "cache_dir")

    @classmethod
    def normalize_device(cls, device: str | None) -> str:
        return (device or cls.default_device).upper()

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("openvino")

    @classmethod
    def devices(cls) -> list[str]:
        found = list(_ov_devices())
        return [*found, "AUTO"] if found else []

    def _load(self) -> None:
        ov = _import_engine("openvino", self.spec, "openvino")
        core = ov.Core()
        available = list(core.available_devices)
        base = self.device.split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO") and not any(d.split(".")[0] == base for d in available):
            raise EdgeftError(
                f"OpenVINO device {self.device!r} is not available here; available devices: {available + ['AUTO']}",
                fix="pick one of them, e.g. --backend openvino:CPU",
            )
        hint = str(self.options.get("hint") or "THROUGHPUT").upper()
        if hint not in OV_HINTS:
            raise EdgeftError(f"unknown OpenVINO performance hint {hint!r}; use one of {OV_HINTS}", fix="fix --hint")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if self.options.get("threads"):
            config["INFERENCE_NUM_THREADS"] = int(self.options["threads"])
        if self.options.get("streams"):
            config["NUM_STREAMS"] = str(self.options["streams"])
        if base == "CPU" and self.artifact.precision == "fp32":
            # CPUs with bf16/AMX units would otherwise silently run an "fp32" artifact in bf16.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if self.options.get("cache_dir"):
            config["CACHE_DIR"] = str(self.options["cache_dir"])
        try:
            model = core.read_model(str(self.model_path))
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as exc:  # openvino raises RuntimeError subclasses with long messages
            raise EdgeftError(
                f"OpenVINO cannot compile the model for {self.device} ({type(exc).__name__}: {exc})",
                path=self.model_path,
                fix="re-export the bundle with `edgeft export`, or try --backend openvino:CPU",
            ) from None
        self.hint = hint
        try:
            self.nireq = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:
            self.nireq = 1
        self.output = self.compiled.outputs[0]
        for out in self.compiled.outputs:
            if self.bundle.output.get("name") in out.get_names():
                self.output = out
        self.requests = [self.compiled.create_infer_request() for _ in range(self.nireq)]
        self.lock = threading.Lock()  # an InferRequest must not be used by two threads at once
        shape = self.compiled.inputs[0].get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        try:
            self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except Exception:
            self.inference_precision = ""

    def describe(self) -> str:
        text = super().describe()
        runs = getattr(self, "inference_precision", "") if self.loaded else ""
        expected = {"fp32": "f32", "fp16": "f16"}.get(self.artifact.precision)
        if runs and expected and runs != expected:  # e.g. an fp16 IR on a bf16-capable CPU computes in bf16
            text += f" [computes in {runs}]"
        return text

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        with self.lock:
            if self.static_batch:
                return _run_in_static_chunks(batch, self.static_batch, self._run_one)
            if self.nireq == 1 or n < 2:
                return self._run_one(batch)
            per = -(-n // self.nireq)
            return np.concatenate(self._run_parallel([batch[i : i + per] for i in range(0, n, per)]))

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        return self.requests[0].infer({0: batch}, share_inputs=True)[self.output].copy()

    def _run_parallel(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run batches on all requests at once, in waves of nireq; results keep the input order."""
        outs: list[np.ndarray] = []
        for start in range(0, len(batches), self.nireq):
            wave = list(zip(self.requests, batches[start : start + self.nireq], strict=False))
            for req, b in wave:
                req.start_async({0: b}, share_inputs=True)
            for req, _ in wave:
                req.wait()
                outs.append(req.get_tensor(self.output).data.copy())
        return outs

    def infer_many(self, batches: Iterable[np.ndarray]) -> list[np.ndarray]:
        checked = [self.check_batch(b) for b in batches]
        if self.nireq == 1 or self.static_batch or len(checked) < 2:
            return [self.infer(b) for b in checked]
        if not self.loaded:
            raise EdgeftError(f"{self.describe()} is not loaded", fix="call .load() or use it as a context manager")
        with self.lock:
            outs = self._run_parallel(checked)
        return [self.check_output(o, b.shape[0]) for o, b in zip(outs, checked, strict=True)]

    def _close(self) -> None:
        self.requests = []
        self.compiled = None


# ---------------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------------
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


@register_backend
class TensorRTBackend(Backend):
    """A serialized TensorRT plan (TRT 10/11 tensor API), refused unless its GPU/TRT fingerprint matches here."""

    name = "tensorrt"
    formats = ("tensorrt",)
    default_device = ""

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("tensorrt")

    @classmethod
    def devices(cls) -> list[str]:
        return [""] if cls.is_installed() and cuda_compute_capability() is not None else []

    def fingerprint_problems(self) -> list[str]:
        """Why this plan cannot run on this machine (empty = it can)."""
        return trt_fingerprint_problems(self.artifact.info, cuda_compute_capability(), tensorrt_version())

    def _load(self) -> None:
        trt = _import_engine("tensorrt", self.spec, "tensorrt")
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
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
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
        in_bytes = self.max_batch * 3 * self.input_size * self.input_size * self.in_dtype.itemsize
        out_bytes = self.max_batch * self.num_classes * self.out_dtype.itemsize
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
        out = np.empty((n, self.num_classes), self.out_dtype)
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


# ---------------------------------------------------------------------------------------------
# torch (reference)
# ---------------------------------------------------------------------------------------------
@register_backend
class TorchBackend(Backend):
    """The training-time torch model (eager FP32), loaded from bundle.source.run_dir: the parity reference."""

    name = "torch"
    formats = ("torch",)
    default_device = "cpu"

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("torch")

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"] if cls.is_installed() else []

    @property
    def run_dir(self) -> Path:
        return Path(self.artifact.path)

    def model_bytes(self) -> int:
        f = self.run_dir / "model.safetensors"
        return f.stat().st_size if f.is_file() else 0

    def _load(self) -> None:
        torch = _import_engine("torch", self.spec, "torch")
        try:
            from edgeft.train.model import load_run
        except ImportError as exc:
            raise EdgeftError(
                f"the torch backend needs edgeft's training package ({exc})",
                fix="pip install 'edgeft[train]', or use an exported backend (onnxruntime, openvino)",
            ) from None
        self.torch = torch
        self.model, self.manifest = load_run(self.run_dir)
        self.model.eval()
        if self.device != "cpu":
            self.model.to(self.device)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            return self.model(x).float().cpu().numpy()

    def _close(self) -> None:
        self.model = None


def torch_artifact(bundle: BundleManifest, bundle_dir: str | Path) -> Artifact:
    """A pseudo-artifact for the torch reference: the run dir the bundle was exported from."""
    run_dir = bundle.source.get("run_dir")
    if not run_dir:
        raise EdgeftError(
            "bundle.json has no source.run_dir, so there is no torch model to load",
            path=Path(bundle_dir) / "bundle.json",
            fix="use an exported backend (onnxruntime, openvino), or re-export from a run dir",
        )
    run = Path(run_dir)
    if not run.is_absolute():
        run = (Path(bundle_dir) / run).resolve()
    return Artifact(
        name="torch-fp32",
        format="torch",
        precision="fp32",
        path=str(run),
        sha256=str(bundle.source.get("weights_sha256") or ""),
    )


def verify_artifact(bundle: BundleManifest, bundle_dir: str | Path, artifact: Artifact) -> None:
    """Refuse files whose sha256 differs from bundle.json (for torch: the run's weights vs source.weights_sha256)."""
    if artifact.format != "torch":
        bundle.verify(bundle_dir, names=[artifact.name])
        return
    weights = Path(artifact.path) / "model.safetensors"
    if artifact.sha256 and weights.is_file() and sha256_file(weights) != artifact.sha256:
        raise EdgeftError(
            "the run's weights differ from the ones this bundle was exported from (sha256 mismatch)",
            path=weights,
            fix="re-export the bundle from this run, or point at the run the bundle came from",
        )


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------
def available_backends() -> list[str]:
    """Backend specs that can run on this machine (installed engine and device), fastest-first per kind."""
    specs = []
    for name in ("tensorrt", "onnxruntime", "openvino", "torch"):
        cls = BACKENDS.get(name)
        if cls is None or not cls.is_installed():
            continue
        for dev in cls.devices():
            specs.append(f"{name}:{dev}" if dev else name)
    return specs


def find_artifact(bundle: BundleManifest, fmt: str, precision: str, device: str | None = None) -> Artifact | None:
    """The bundle's best artifact of a format and precision for a device.

    Preference: a device-specific variant ("onnx-int8-cpu" for onnxruntime:cpu), then the canonical
    "<format>-<precision>" name, then any other match in bundle order. Among TensorRT plans, the one
    whose fingerprint fits this machine wins.
    """
    matches = [a for a in bundle.artifact_list() if a.format == fmt and a.precision == precision]
    if fmt == "tensorrt" and len(matches) > 1:
        cc, ver = cuda_compute_capability(), tensorrt_version()
        fitting = [a for a in matches if not trt_fingerprint_problems(a.info, cc, ver)]
        matches = fitting or matches
    canonical = f"{fmt}-{precision}"
    preferred = [f"{canonical}-{device.lower()}"] if device else []
    preferred.append(canonical)

    def rank(a: Artifact) -> int:
        return preferred.index(a.name) if a.name in preferred else len(preferred)

    return min(matches, key=rank) if matches else None


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise EdgeftError(f"unknown precision {precision!r}; use one of {PRECISIONS}", fix="e.g. --precision int8")


def auto_candidates(bundle: BundleManifest, precision: str) -> list[tuple[str, Artifact]]:
    """Runnable (backend spec, artifact) pairs for a precision, best first: TensorRT > ORT CUDA > measured CPU order."""
    _check_precision(precision)
    runnable = set(available_backends())
    order = ["tensorrt", "onnxruntime:cuda", *CPU_PREFERENCE[precision]]
    picked = []
    for spec in order:
        if spec not in runnable:
            continue
        name, device = parse_spec(spec)
        for fmt in backend_class(name).formats:
            art = find_artifact(bundle, fmt, precision, device)
            if art is None:
                continue
            if fmt == "tensorrt" and trt_fingerprint_problems(art.info, cuda_compute_capability(), tensorrt_version()):
                continue
            picked.append((spec, art))
    return picked


def resolve(bundle_dir: str | Path, bundle: BundleManifest, backend: str, precision: str) -> tuple[str, Artifact]:
    """Turn ('auto' | spec, precision) into the concrete (spec, artifact) that will run."""
    _check_precision(precision)
    if backend == "auto":
        picked = auto_candidates(bundle, precision)
        if not picked:
            have = [f"{a.name}" for a in bundle.artifact_list()]
            raise EdgeftError(
                f"no backend on this machine can run a {precision} artifact of this bundle; "
                f"bundle artifacts: {have}; backends available here: {available_backends()}",
                path=Path(bundle_dir) / "bundle.json",
                fix="pick another --precision, export the missing artifact, or install its engine",
            )
        return picked[0]
    name, device = parse_spec(backend)
    cls = backend_class(name)
    spec = f"{name}:{cls.normalize_device(device)}" if cls.normalize_device(device) else name
    if name == "torch":
        if precision != "fp32":
            raise EdgeftError("the torch reference backend is fp32 only", fix="use --precision fp32")
        return spec, torch_artifact(bundle, bundle_dir)
    for fmt in cls.formats:
        art = find_artifact(bundle, fmt, precision, cls.normalize_device(device))
        if art is not None:
            return spec, art
    raise EdgeftError(
        f"bundle has no {precision} artifact for backend {name!r} (formats {list(cls.formats)}); "
        f"it has {[a.name for a in bundle.artifact_list()]}",
        path=Path(bundle_dir) / "bundle.json",
        fix="pick another --precision or --backend, or export the missing artifact with `edgeft export`",
    )


def create_backend(
    bundle_dir: str | Path, bundle: BundleManifest, spec: str, artifact: Artifact, **options: Any
) -> Backend:
    """Instantiate (not load) the backend class named by `spec` for `artifact`."""
    name, device = parse_spec(spec)
    return backend_class(name)(bundle_dir, bundle, artifact, device, **options)


def open_backend(
    bundle_dir: str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    *,
    verify: bool = True,
    **options: Any,
) -> Backend:
    """Pick, sha256-verify and load the backend for a bundle; `auto` takes the fastest one that runs here.

    Extra keyword options go to the backend (threads=, hint= and streams= for OpenVINO, cache_dir=).
    """
    bundle_dir = Path(bundle_dir)
    bundle = BundleManifest.load(bundle_dir)
    spec, artifact = resolve(bundle_dir, bundle, backend, precision)
    if verify:
        verify_artifact(bundle, bundle_dir, artifact)
    return create_backend(bundle_dir, bundle, spec, artifact, **options).load()


# ---------------------------------------------------------------------------------------------
# every runnable (backend, artifact) pair of a bundle: what parity and bench iterate over
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One backend spec running one artifact, e.g. key 'openvino:CPU/openvino-int8'."""

    spec: str
    artifact: Artifact

    @property
    def key(self) -> str:
        return f"{self.spec}/{self.artifact.name}"

    @property
    def precision(self) -> str:
        return self.artifact.precision


def _selected(target_spec: str, artifact: Artifact, selectors: Sequence[str] | None, explicit_only: bool) -> bool:
    """Does a --backends token list pick this pair? Tokens: spec, engine, artifact name, format or precision."""
    if not selectors:
        return not explicit_only
    if explicit_only:
        names = {target_spec.lower()}
    else:
        engine = parse_spec(target_spec)[0]
        names = {
            target_spec.lower(),
            engine,
            artifact.name.lower(),
            artifact.format.lower(),
            artifact.precision.lower(),
        }
    return any(tok.strip().lower() in names for tok in selectors if tok.strip())


def plan_targets(
    bundle: BundleManifest, bundle_dir: str | Path, selectors: Sequence[str] | None = None
) -> tuple[list[Target], dict[str, str]]:
    """Every (backend, artifact) pair that can run here, plus {key: reason} for the ones that cannot.

    onnxruntime's TensorRT provider and the torch model (bundle.source.run_dir) only run when named in `selectors`.
    """
    runnable = set(available_backends())
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    engines = {"onnx": ("onnxruntime", ["cpu", "cuda", "tensorrt"]), "openvino": ("openvino", ["CPU", "GPU", "NPU"])}
    for art in bundle.artifact_list():
        if art.format == "tensorrt":
            if not _selected("tensorrt", art, selectors, explicit_only=False):
                continue
            problems = trt_fingerprint_problems(art.info, cuda_compute_capability(), tensorrt_version())
            if problems:
                skipped[f"tensorrt/{art.name}"] = "; ".join(problems)
            else:
                targets.append(Target("tensorrt", art))
            continue
        if art.format not in engines:
            skipped[f"?/{art.name}"] = f"no backend runs format {art.format!r}"
            continue
        engine, devices = engines[art.format]
        for dev in devices:
            spec = f"{engine}:{dev}"
            explicit = spec == "onnxruntime:tensorrt"
            if not _selected(spec, art, selectors, explicit_only=explicit):
                continue
            if spec in runnable:
                targets.append(Target(spec, art))
            elif dev in ("cpu", "CPU") or explicit:
                skipped[f"{spec}/{art.name}"] = f"{spec} is not available here (available: {sorted(runnable)})"
    if selectors and any(t.strip().lower() in ("torch", "torch:cpu") for t in selectors):
        if "torch:cpu" not in runnable:
            skipped["torch:cpu/torch-fp32"] = "torch is not installed"
        elif not bundle.source.get("run_dir"):
            skipped["torch:cpu/torch-fp32"] = "bundle.json has no source.run_dir"
        else:
            targets.append(Target("torch:cpu", torch_artifact(bundle, bundle_dir)))
    return targets, skipped
