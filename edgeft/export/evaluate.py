"""Every artifact is run on the run's test split and compared with PyTorch before it may ship."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from edgeft.export.context import Built, ExportContext
from edgeft.export.onnx_export import PARITY_ATOL, parity_problems

EVAL_BATCH = 16


def run_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    outs = [np.asarray(run(np.ascontiguousarray(x[i : i + batch])), np.float32) for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@dataclass
class Row:
    """One line of the export table (and of export_report.json)."""

    artifact: str
    format: str
    precision: str
    path: str
    size_mb: float
    accuracy: float
    agreement: float  # top-1 agreement with PyTorch on the test split
    delta_pts: float  # accuracy minus PyTorch accuracy, in percentage points
    max_abs_logit_diff: float
    status: str = "ok"  # ok | rejected
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == y)) if len(y) else float("nan")


def reference_row(ctx: ExportContext, weights_bytes: int) -> Row:
    ref = ctx.test.reference
    acc = accuracy(ref, ctx.test.y)
    return Row("torch-fp32", "torch", "fp32", "model.safetensors", weights_bytes / 1e6, acc, 1.0, 0.0, 0.0, "reference")


def evaluate(ctx: ExportContext, built: Built, run: Callable[[np.ndarray], np.ndarray] | None) -> Row:
    """Accuracy, agreement and logit distance vs PyTorch; the status says whether the artifact may ship.

    FP32 artifacts must match (parity); INT8 ones may lose at most max_drop points; FP16 is reported only.
    """
    if built.name in ctx.logits:
        logits = ctx.logits[built.name]
    else:
        logits = run_batches(run, ctx.test.x)
        ctx.logits[built.name] = logits
    ref, y = ctx.test.reference, ctx.test.y
    acc, ref_acc = accuracy(logits, y), accuracy(ref, y)
    row = Row(
        artifact=built.name,
        format=built.format,
        precision=built.precision,
        path=built.path,
        size_mb=built.size_bytes(ctx.work) / 1e6,
        accuracy=acc,
        agreement=float(np.mean(logits.argmax(1) == ref.argmax(1))) if len(y) else float("nan"),
        delta_pts=100.0 * (acc - ref_acc),
        max_abs_logit_diff=float(np.abs(logits - ref).max()) if len(y) else 0.0,
    )
    if built.precision == "fp32":
        onnx_ref = ctx.logits.get("onnx-fp32")
        problems = parity_problems(logits, onnx_ref if onnx_ref is not None else ref, PARITY_ATOL)
        if problems:
            row.status, row.reason = "rejected", "FP32 parity: " + "; ".join(problems)
    elif -row.delta_pts > ctx.options.max_drop:
        loss = f"loses {-row.delta_pts:.2f} pts of test accuracy (> --max-drop {ctx.options.max_drop:g})"
        if built.precision == "int8":
            row.status, row.reason = "rejected", loss
        else:
            row.reason = f"{loss}; only INT8 is gated"
    return row
