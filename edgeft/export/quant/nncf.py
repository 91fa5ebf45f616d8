"""NNCF post-training quantization of an OpenVINO IR, optionally with accuracy control on the val split."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np


def _count(model, op_type: str) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == op_type)


def stem_convs(model) -> list[str]:
    """Friendly names of the Convolutions fed straight by a model input (kept float, as in ort_quant)."""
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Convolution" and op.input_value(0).get_node().get_type_name() == "Parameter"
    ]


def _validate(compiled_model, items) -> tuple[float, list[float]]:
    """NNCF validation_fn: accuracy plus one 0/1 value per image (lets NNCF rank layers by their damage)."""
    output = compiled_model.output(0)
    hits = [float(np.argmax(compiled_model(x)[output], axis=1)[0] == y) for x, y in items]
    return (float(np.mean(hits)) if hits else 0.0), hits


def quantize_ir(
    nncf: Any, model: Any, calib: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, max_drop_pts: float
) -> tuple[Any, dict]:
    """INT8 IR via nncf.quantize, or nncf.quantize_with_accuracy_control when `val` (x, label indices) is given.

    Accuracy control keeps the quantizers whose removal restores the most val accuracy in float until the
    drop is within max_drop_pts (absolute percentage points).
    """
    from edgeft.export.quant.ort import FLOAT_STEM

    dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
    float_ops = stem_convs(model) if FLOAT_STEM else []
    # Full bias correction, not the fast one: on the default synthetic run it lifts top-1 agreement with FP32
    # from 97.7% to 98.5% on the test split for ~20 s more (benchmarks/bench_export.py).
    common = {
        "subset_size": len(calib),
        "preset": nncf.QuantizationPreset.PERFORMANCE,
        "fast_bias_correction": False,
    }
    if float_ops:
        common["ignored_scope"] = nncf.IgnoredScope(names=float_ops)
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if val is None:
            quantized = nncf.quantize(model, dataset, **common)
        else:
            val_x, val_y = val
            validation = nncf.Dataset(
                [(val_x[i : i + 1], int(val_y[i])) for i in range(len(val_y))], lambda item: item[0]
            )
            quantized = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                validation,
                _validate,
                max_drop=max_drop_pts / 100.0,
                drop_type=nncf.DropType.ABSOLUTE,
                **common,
            )
    info = {
        "quantizer": f"nncf {nncf.__version__}",
        "preset": "performance (symmetric)",
        "calibration_images": int(len(calib)),
        "fake_quantize_ops": _count(quantized, "FakeQuantize"),
        "accuracy_control": val is not None,
        "float_ops": float_ops,
    }
    if val is not None:
        info.update({"max_drop_pts": max_drop_pts, "val_images": int(len(val[1]))})
    return quantized, info
