"""OpenVINO runtime on CPU/GPU/NPU/AUTO: runs IR files (.xml + .bin) in FP32, FP16/BF16 and INT8.

On CPUs with bf16 units OpenVINO silently computes "fp32" models in bf16 unless told otherwise, so FP32
models are pinned to f32 and a "bf16" artifact is named for what it computes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.engines.base import Engine, has_module, import_engine, register_engine, run_in_static_chunks

# What the CPU plugin is told to compute for each artifact precision (absent: OpenVINO's own choice).
PINNED_PRECISION = {"fp32": "f32", "bf16": "bf16"}

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


def _rt_info(model: Any, key: str) -> str | None:
    """edgeft metadata the exporter stored in the IR's rt_info (None when absent)."""
    try:
        return str(model.get_rt_info(["edgeft", key]).astype(str)) if model.has_rt_info(["edgeft", key]) else None
    except Exception:  # an IR without edgeft rt_info, or an older OpenVINO API
        return None


@register_engine
class OpenVinoEngine(Engine):
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
    option_names = ("hint", "threads", "streams", "cache_dir", "image_input")

    def __init__(self, model_path: str | Path, **kw: Any) -> None:
        super().__init__(model_path, **kw)
        norm = self.options.get("image_input")
        if norm is not None:
            # image_input=(mean, std): the graph takes (N, S, S, 3) uint8 RGB images and normalises them itself
            # (OpenVINO's PrePostProcessor: ((x / 255) - mean) / std, then NHWC -> NCHW), so the host only
            # resizes: no float pass over every pixel, a quarter of the input bytes.
            mean, std = (tuple(float(v) for v in part) for part in norm)
            if len(mean) != 3 or len(std) != 3:
                raise EdgeftError(f"image_input takes (mean, std) of 3 values each, got {norm!r}", fix="report a bug")
            self.options["image_input"] = (mean, std)
            self.input_dtype = np.dtype(np.uint8)
            if self.input_shape is not None and len(self.input_shape) == 3:
                c, h, w = self.input_shape
                self.input_shape = (h, w, c)

    @property
    def takes_images(self) -> bool:
        """Whether batches are (N, S, S, 3) uint8 images (image_input) rather than normalised tensors."""
        return self.options.get("image_input") is not None

    @classmethod
    def normalize_device(cls, device: str | None) -> str:
        return (device or cls.default_device).upper()

    @classmethod
    def default_options(cls, batch_size: int) -> dict[str, Any]:
        return {"hint": "LATENCY" if batch_size <= 1 else "THROUGHPUT"}

    @classmethod
    def is_installed(cls) -> bool:
        return has_module("openvino")

    @classmethod
    def devices(cls) -> list[str]:
        found = list(_ov_devices())
        return [*found, "AUTO"] if found else []

    def compile_config(self) -> dict[str, Any]:
        """The compile settings that decide how the model computes (the model cache dir, which does not, is added
        in `_load`)."""
        hint = str(self.options.get("hint") or "THROUGHPUT").upper()
        if hint not in OV_HINTS:
            raise EdgeftError(f"unknown OpenVINO performance hint {hint!r}; use one of {OV_HINTS}", fix="fix --hint")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if self.options.get("threads"):
            config["INFERENCE_NUM_THREADS"] = int(self.options["threads"])
        if self.options.get("streams"):
            config["NUM_STREAMS"] = str(self.options["streams"])
        if self.device.split(".")[0] == "CPU" and self.precision in PINNED_PRECISION:
            # CPUs with bf16/AMX units would otherwise silently run an "fp32" (or "fp16") model in bf16.
            config["INFERENCE_PRECISION_HINT"] = PINNED_PRECISION[self.precision]
        return config

    def numerics(self) -> dict[str, Any]:
        # the hint and stream count decide how a batch is split over parallel requests
        extra = {"image_input": [list(v) for v in self.options["image_input"]]} if self.takes_images else {}
        return {**super().numerics(), **self.compile_config(), **extra}

    def _load(self) -> None:
        ov = import_engine("openvino", self.spec, "openvino")
        core = ov.Core()
        available = list(core.available_devices)
        base = self.device.split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO") and not any(d.split(".")[0] == base for d in available):
            raise EdgeftError(
                f"OpenVINO device {self.device!r} is not available here; available devices: {available + ['AUTO']}",
                fix="pick one of them, e.g. --backend openvino:CPU",
            )
        config = self.compile_config()
        hint = config["PERFORMANCE_HINT"]
        if self.options.get("cache_dir"):
            config["CACHE_DIR"] = str(self.options["cache_dir"])
        try:
            model = core.read_model(str(self.model_path))
            compiled_model = self._with_image_input(model) if self.takes_images else model
            self.compiled = core.compile_model(compiled_model, self.device, config)
        except Exception as exc:  # openvino raises RuntimeError subclasses with long messages
            raise EdgeftError(
                f"OpenVINO cannot compile the model for {self.device} ({type(exc).__name__}: {exc})",
                path=self.model_path,
                fix="re-export the bundle with `edgeft export`, or try --backend openvino:CPU",
            ) from None
        self.check_classes(_rt_info(model, "classes_sha256"))
        self.hint = hint
        try:
            self.nireq = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:
            self.nireq = 1
        self.output = self.compiled.outputs[0]
        for out in self.compiled.outputs:
            if self.output_name in out.get_names():
                self.output = out
        self.requests = [self.compiled.create_infer_request() for _ in range(self.nireq)]
        self.lock = threading.Lock()  # an InferRequest must not be used by two threads at once
        shape = self.compiled.inputs[0].get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        try:
            self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except Exception:
            self.inference_precision = ""

    def _with_image_input(self, model: Any) -> Any:
        from openvino import Layout, Type
        from openvino.preprocess import PrePostProcessor

        mean, std = self.options["image_input"]
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(Type.u8).set_layout(Layout("NHWC"))
        ppp.input().preprocess().convert_element_type(Type.f32).scale(255.0).mean(list(mean)).scale(list(std))
        ppp.input().model().set_layout(Layout("NCHW"))
        return ppp.build()

    def describe(self) -> str:
        text = super().describe()
        runs = getattr(self, "inference_precision", "") if self.loaded else ""
        expected = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}.get(self.precision)
        if runs and expected and runs != expected:  # e.g. an fp16 IR on a bf16-capable CPU computes in bf16
            text += f" [computes in {runs}]"
        if self.takes_images:
            text += " [uint8 image input]"
        return text

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        with self.lock:
            if self.static_batch:
                return run_in_static_chunks(batch, self.static_batch, self._run_one)
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

    def model_files(self) -> list[Path]:
        return [self.model_path, self.model_path.with_suffix(".bin")]

    def _close(self) -> None:
        self.requests = []
        self.compiled = None
