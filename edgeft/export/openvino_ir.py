"""OpenVINO IR artifacts: FP32, FP16, INT8 converted from the Q/DQ ONNX, and INT8 from NNCF post-training quantization."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from edgeft.engines.base import has_module
from edgeft.export.context import Built, ExportContext

DIR = "openvino"


def unavailable() -> str | None:
    return None if has_module("openvino") else "the openvino package is not installed (pip install openvino)"


def _save(ctx: ExportContext, model: Any, stem: str, fp16: bool) -> tuple[str, list[str]]:
    """Save an IR pair with edgeft metadata in rt_info; returns (xml, [bin]) relative to the bundle."""
    import openvino as ov

    for key, value in ctx.metadata.items():
        model.set_rt_info(value, ["edgeft", key.removeprefix("edgeft.")])
    (ctx.work / DIR).mkdir(exist_ok=True)
    xml = f"{DIR}/{stem}.xml"
    ov.save_model(model, str(ctx.work / xml), compress_to_fp16=fp16)
    return xml, [f"{DIR}/{stem}.bin"]


def _from_onnx(ctx: ExportContext, onnx_rel: str, name: str, precision: str, stem: str, fp16: bool, info: dict) -> None:
    import openvino as ov

    ctx.step(f"OpenVINO IR {name}")
    xml, extra = _save(ctx, ov.convert_model(str(ctx.work / onnx_rel)), stem, fp16)
    ctx.add(Built(name, "openvino", precision, xml, extra, {"source": onnx_rel, "openvino": ov.get_version(), **info}))


def computes_in() -> str:
    """What this machine's OpenVINO CPU plugin computes a half-precision IR in by default: bf16, f16 or f32.

    On CPUs with bf16 units (AVX-512 BF16, AMX) an "FP16" IR runs in bf16, which rounds far more coarsely
    than fp16; the artifact is then named bf16 and judged as what it computes.
    """
    import openvino as ov

    try:
        caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # no CPU plugin: keep the file's own name
        return "f16"
    if "BF16" in caps:
        return "bf16"
    return "f16" if "FP16" in caps else "f32"


def build(ctx: ExportContext) -> None:
    _from_onnx(ctx, "model.onnx", "openvino-fp32", "fp32", "model.fp32", False, {"compress_to_fp16": False})
    if ctx.options.fp16:
        half = computes_in()
        name, precision = ("openvino-bf16", "bf16") if half == "bf16" else ("openvino-fp16", "fp16")
        info = {"compress_to_fp16": True, "cpu_computes_in": half}
        _from_onnx(ctx, "model.onnx", name, precision, "model.fp16", True, info)
    if not ctx.options.int8:
        return
    qdq = ctx.get("onnx-int8")
    if qdq is not None:
        info = {
            "quantizer": "onnxruntime Q/DQ -> OpenVINO FakeQuantize",
            "calibration_key": qdq.info.get("calibration_key"),
        }
        _from_onnx(ctx, qdq.path, "openvino-int8-qdq", "int8", "model.int8-qdq", False, info)
    build_nncf(ctx)


def _nncf() -> tuple[Any, str | None]:
    """nncf, or None and why: a broken optional quantizer must not fail the export."""
    if not has_module("nncf"):
        return None, "nncf is not installed (pip install 'edgeft[quant]')"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import nncf
    except Exception as exc:  # nncf pulls in torch/openvino extensions that can fail in many ways
        return None, f"nncf failed to import ({type(exc).__name__}: {exc})"
    return nncf, None


def build_nncf(ctx: ExportContext) -> None:
    """nncf.quantize on the FP32 IR over the calib tensors; with accuracy control, val-split guarded."""
    nncf, why = _nncf()
    if nncf is None:
        ctx.note(f"openvino-int8 (NNCF): skipped ({why})")
        return
    import openvino as ov

    from edgeft.export.quant.nncf import quantize_ir

    cal = ctx.calibration_data()
    fp32 = ctx.get("openvino-fp32")
    assert fp32 is not None  # built first by `build`
    val = ctx.val_set() if ctx.options.accuracy_control else None
    if ctx.options.accuracy_control and val is None:
        ctx.note("openvino-int8 (NNCF): the run has no val images, so accuracy control is off")
    ctx.step("OpenVINO INT8 (NNCF" + (" with accuracy control)" if val is not None else ")"))
    model = ov.Core().read_model(str(ctx.work / fp32.path))
    quantized, info = quantize_ir(nncf, model, cal.tensors, val, ctx.options.max_drop)
    xml, extra = _save(ctx, quantized, "model.int8", False)
    info.update({"calibration_key": cal.key, "calibration_method": "nncf (min/max + bias correction)"})
    ctx.add(Built("openvino-int8", "openvino", "int8", xml, extra, info))
