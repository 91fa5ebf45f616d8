"""Every artifact is run through `edgeft.engines` on the judging images and accepted or rejected by THE gate.

The reference is the run's torch FP32 model (`TorchEngine`), the candidate engine is the one that will
serve the artifact, and the verdict comes from `edgeft.check.comparator.compare` + `edgeft.check.gate.Gate`:
the same comparator and gate `edgeft parity` uses, so export and parity cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeft.check.comparator import compare
from edgeft.check.gate import failed_to_run
from edgeft.check.refcache import artifact_key, run_cached
from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import GateRecord
from edgeft.core.reports import Comparison, ExportRow
from edgeft.engines.base import Engine
from edgeft.engines.onnxruntime import OnnxRuntimeEngine
from edgeft.engines.openvino import OpenVinoEngine
from edgeft.engines.tensorrt import TensorRTEngine
from edgeft.export.context import Built, ExportContext, Judging
from edgeft.models.onnx import OUTPUT_NAME

EVAL_BATCH = 32
ENGINE_BY_FORMAT: dict[str, type[Engine]] = {
    "onnx": OnnxRuntimeEngine,
    "openvino": OpenVinoEngine,
    "tensorrt": TensorRTEngine,
}


def engine_for(ctx: ExportContext, built: Built) -> Engine:
    """The engine that serves this artifact, on the work-dir file (TensorRT plans carry their build fingerprint)."""
    cls = ENGINE_BY_FORMAT[built.format]
    options = {"fingerprint": built.info} if built.format == "tensorrt" else {}
    s = ctx.spec.input_size
    return cls(
        ctx.work / built.path,
        precision=built.precision,
        input_shape=(3, s, s),
        num_outputs=len(ctx.classes),
        output_name=OUTPUT_NAME,
        label=built.name,
        **options,
    )


def reference_row(ctx: ExportContext, weights: Path) -> ExportRow:
    """The torch FP32 row of the table: its accuracy on the judging images (agreement with itself is 1)."""
    j = ctx.judging
    return ExportRow(
        artifact="torch-fp32",
        format="torch",
        precision="fp32",
        path=weights.name,
        size_mb=weights.stat().st_size / 1e6,
        status="reference",
        comparison=compare(j.reference, j.reference, ctx.classes, j.labels, j.sources),
    )


def _row(ctx: ExportContext, built: Built, gate: GateRecord, comparison: Comparison | None = None) -> ExportRow:
    return ExportRow(
        artifact=built.name,
        format=built.format,
        precision=built.precision,
        path=built.path,
        size_mb=built.size_bytes(ctx.work) / 1e6,
        status="ok" if gate.passed else "rejected",
        reason="; ".join(gate.reasons),
        comparison=comparison,
        gate=gate,
    )


def judge_logits(ctx: ExportContext, built: Built, logits: np.ndarray) -> ExportRow:
    j: Judging = ctx.judging
    comparison = compare(j.reference, logits, ctx.classes, j.labels, j.sources)
    return _row(ctx, built, j.gate.judge(built.precision, comparison, judged_on=j.evalset.origin), comparison)


def outputs_key(ctx: ExportContext, built: Built, engine: Engine) -> str:
    """The artifact-cache key of this artifact's engine on the judging images: `edgeft parity` finds the logits
    under the same key (bundle.json records the same sha256s), and so does a re-export that wrote the same bytes."""
    files = [ctx.work / f for f in built.files()]
    if not all(f.is_file() for f in files):
        return ""  # the engine reports the missing file
    model, *extra = (built.sha256(ctx.work, f) for f in built.files())
    return artifact_key(engine, model, extra, ctx.spec, ctx.judging.images, EVAL_BATCH)


def judge(ctx: ExportContext, built: Built) -> ExportRow:
    """Run the artifact on its engine and judge it; one that cannot load or run is rejected, not a crash.

    Its logits go to the artifact cache (check/refcache.py), so `edgeft parity` does not run it again.
    """
    j = ctx.judging
    ctx.step(f"judge {built.name} on {len(j.x)} {j.split} images", len(j.x))
    try:
        engine = engine_for(ctx, built)
        logits = run_cached(engine, j.x, EVAL_BATCH, outputs_key(ctx, built, engine), ctx.rep.advance).logits
    except EdgeftError as exc:
        return _row(ctx, built, failed_to_run(exc.message, j.evalset.origin))
    return judge_logits(ctx, built, logits)
