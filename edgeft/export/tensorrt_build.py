"""TensorRT plans (optional): INT8 from the Q/DQ ONNX as a strongly typed network, and FP16.

TRT 10 and 11 differ here: explicit batch is the default since 10 (the EXPLICIT_BATCH flag is only set
before 10); FP16 uses BuilderFlag.FP16 on a weakly typed network up to TRT 10, while TRT 11 (weak typing
removed) gets an FP16-typed ONNX (I/O kept FP32) built strongly typed. Plans are tied to the GPU's compute
capability and the TensorRT version, so both are in the file name and in bundle.json's artifact info.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeft.core.errors import EdgeftError
from edgeft.engines.base import has_module
from edgeft.engines.tensorrt import cuda_compute_capability
from edgeft.export.context import Built, ExportContext
from edgeft.export.qdq_check import check_qdq_for_tensorrt

DIR = "tensorrt"
PROFILE = {"min": 1, "opt": 8, "max": 32}
WORKSPACE_BYTES = 2 << 30


def unavailable() -> str | None:
    if not has_module("tensorrt"):
        return "TensorRT is not installed on this machine (pip install tensorrt, on a machine with an NVIDIA GPU)"
    if cuda_compute_capability() is None:
        return "no CUDA GPU found, and TensorRT plans are built on the GPU they run on"
    return None


def plan_name(precision: str, compute_capability: str, trt_version: str) -> str:
    """e.g. tensorrt/model.int8.sm89.trt10.3.plan: one plan per GPU architecture and TensorRT version."""
    major, minor = (trt_version.split(".") + ["0"])[:2]
    return f"{DIR}/model.{precision}.sm{compute_capability.replace('.', '')}.trt{major}.{minor}.plan"


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except Exception:  # torch without CUDA support raises assorted errors
        return ""


def fp16_typed_onnx(src: Path, dst: Path) -> Path:
    """An FP16-typed copy of the FP32 ONNX (inputs/outputs stay FP32) for strongly typed FP16 builds."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save_model(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return dst


def build_plan(trt: Any, onnx_path: Path, input_size: int, *, strongly_typed: bool, fp16_flag: bool) -> bytes:
    """Parse the ONNX, add the batch optimisation profile, build and serialise the engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if _major(trt) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EdgeftError(f"TensorRT cannot parse the ONNX graph ({errors})", path=onnx_path, fix="re-export")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    name, s = network.get_input(0).name, input_size
    profile.set_shape(name, *[(PROFILE[k], 3, s, s) for k in ("min", "opt", "max")])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgeftError("TensorRT failed to build the engine (see its log above)", path=onnx_path, fix="re-export")
    return bytes(plan)


def _fingerprint(trt: Any, cc: str, strongly_typed: bool, source: str) -> dict:
    return {
        "compute_capability": cc,
        "gpu": _gpu_name(),
        "tensorrt": str(trt.__version__),
        "hardware_compatibility": "none",
        "version_compatible": False,
        "strongly_typed": strongly_typed,
        "profile": dict(PROFILE),
        "source": source,
    }


def build(ctx: ExportContext) -> None:
    import tensorrt as trt

    cc = str(cuda_compute_capability())
    (ctx.work / DIR).mkdir(exist_ok=True)
    size = ctx.spec.input_size
    qdq = ctx.get("onnx-int8") if ctx.options.int8 else None
    if qdq is not None:
        problems = check_qdq_for_tensorrt(ctx.work / qdq.path)
        if problems:
            ctx.note(f"tensorrt-int8: skipped (Q/DQ graph breaks TensorRT rules: {problems[0]})")
        else:
            ctx.step("TensorRT INT8 plan (strongly typed, from Q/DQ ONNX)")
            rel = plan_name("int8", cc, trt.__version__)
            plan = build_plan(trt, ctx.work / qdq.path, size, strongly_typed=True, fp16_flag=False)
            (ctx.work / rel).write_bytes(plan)
            ctx.add(Built("tensorrt-int8", "tensorrt", "int8", rel, info=_fingerprint(trt, cc, True, qdq.path)))
    if ctx.options.fp16:
        ctx.step("TensorRT FP16 plan")
        rel = plan_name("fp16", cc, trt.__version__)
        weak = _major(trt) <= 10 and hasattr(trt.BuilderFlag, "FP16")
        with tempfile.TemporaryDirectory(prefix="edgeft-trt-") as tmp:
            src = ctx.work / "model.onnx" if weak else fp16_typed_onnx(ctx.work / "model.onnx", Path(tmp) / "fp16.onnx")
            plan = build_plan(trt, src, size, strongly_typed=not weak, fp16_flag=weak)
        (ctx.work / rel).write_bytes(plan)
        info = _fingerprint(trt, cc, not weak, "model.onnx")
        info["fp16_mode"] = "BuilderFlag.FP16" if weak else "fp16-typed ONNX"
        ctx.add(Built("tensorrt-fp16", "tensorrt", "fp16", rel, info=info))
