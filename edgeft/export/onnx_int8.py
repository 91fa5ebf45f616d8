"""INT8 Q/DQ ONNX artifacts, quantized from the bundle's FP32 ONNX with ONNX Runtime's static quantizer.

The S8S8 copy ("onnx-int8") is what TensorRT and OpenVINO consume, so its graph is checked against
TensorRT's explicit-quantization rules here, on any machine; the U8S8 copy ("onnx-int8-cpu") is the one
ONNX Runtime's x86 kernels run fastest. Both get the same metadata as the FP32 file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeft.data.evalsets import from_splits
from edgeft.engines.onnxruntime import OnnxRuntimeEngine
from edgeft.export.context import Built, ExportContext
from edgeft.export.qdq_check import check_qdq_for_tensorrt
from edgeft.export.quant import ort as ort_quant
from edgeft.export.quant.search import MAX_SEARCH_IMAGES, search, write_tradeoff

FP32_FILE = "model.onnx"


def search_set(ctx: ExportContext) -> tuple[np.ndarray, np.ndarray]:
    """The INT8 search images and the FP32 ONNX's logits on them: only images the head never learnt from.

    The calib split always qualifies; the val split only when the head was not refitted on train+val (a head
    is confident on its own training images, so INT8 would look flawless there and flip on test).
    """
    val = None if ctx.head_saw_val else ctx.val_set()
    calib = from_splits(ctx.splits, "calib", ctx.classes)  # the whole split, not just the calibration sample
    ctx.step(f"INT8 search: preprocess {min(len(calib), MAX_SEARCH_IMAGES)} calib images")
    x_cal = calib.spread(MAX_SEARCH_IMAGES).load(ctx.spec)[0] if len(calib) else ctx.calibration_data().tensors
    x = (x_cal if val is None else np.concatenate([x_cal, val[0]]))[:MAX_SEARCH_IMAGES]
    what = "calib" if val is None else "calib+val"
    ctx.step(f"INT8 search: FP32 reference on {len(x)} {what} images")
    s = ctx.spec.input_size
    fp32 = OnnxRuntimeEngine(
        ctx.work / FP32_FILE, precision="fp32", input_shape=(3, s, s), num_outputs=len(ctx.classes)
    )
    with fp32 as engine:
        return x, engine.run(x, 32)


def build(ctx: ExportContext) -> None:
    """The Q/DQ INT8 variants of the FP32 ONNX (nothing without --int8)."""
    from edgeft.models.onnx import finalize

    if not ctx.options.int8:
        return
    cal = ctx.calibration_data()
    with tempfile.TemporaryDirectory(prefix="edgeft-quant-") as tmp:
        ctx.step("INT8: quant_pre_process")
        pre = ort_quant.pre_process(ctx.work / FP32_FILE, Path(tmp) / "model.pre.onnx")
        searched: tuple[np.ndarray, np.ndarray] | None = None
        for variant in ort_quant.VARIANTS:
            if variant is ort_quant.U8S8_CPU and not ort_quant.EMIT_CPU_VARIANT:
                continue
            ctx.step(f"INT8: quantize_static {variant.artifact} ({cal.method}, {len(cal.tensors)} calib images)")
            out = ctx.work / variant.filename
            if ctx.options.int8_search:
                if searched is None:
                    searched = search_set(ctx)
                info, result = search(
                    pre,
                    out,
                    variant,
                    cal.tensors,
                    cal.method,
                    cal.ranges_cache,
                    *searched,
                    ctx.options.min_agreement,
                    ctx.step,
                )
                ctx.searches.append(result)
            else:
                info = ort_quant.quantize(pre, out, variant, cal.tensors, cal.method, cal.ranges_cache)
            info["calibration_key"] = cal.key
            info["nodes"] = finalize(out, ctx.metadata)
            problems = check_qdq_for_tensorrt(out)
            info["tensorrt_compatible"] = not problems
            if variant is ort_quant.S8S8:
                info["tensorrt_qdq_problems"] = problems[:20]
                if problems:
                    ctx.note(
                        f"{variant.artifact}: Q/DQ graph breaks TensorRT rules: {problems[0]} (+{len(problems) - 1} more)"
                    )
            ctx.add(Built(variant.artifact, "onnx", "int8", variant.filename, info=info))
    if ctx.searches:
        write_tradeoff(ctx.searches, ctx.options.min_agreement, ctx.work)
        for r in ctx.searches:
            if r.chosen is None:
                ctx.note(r.why_not_chosen())
