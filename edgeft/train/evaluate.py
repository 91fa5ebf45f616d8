"""`edgeft eval`: metrics of a run's torch model on its test split or on another image tree."""

from __future__ import annotations

from pathlib import Path

from edgeft.core.locate import locate
from edgeft.core.manifests import ModelManifest
from edgeft.core.progress import Reporter, or_silent
from edgeft.core.reports import SplitMetrics
from edgeft.data.evalsets import eval_set
from edgeft.engines.torch import TorchEngine
from edgeft.train.metrics import classification_metrics


def evaluate_run(
    run: str | Path | None = None, data: str | Path | None = None, reporter: Reporter | None = None
) -> tuple[SplitMetrics, Path, Path]:
    """(metrics, where they were written, the run dir) for RUN (or the latest run) on its test split or `data`."""
    rep = or_silent(reporter)
    run_dir = locate(run, need_bundle=False).run_dir
    assert run_dir is not None
    manifest = ModelManifest.load(run_dir)
    evalset = eval_set(run_dir, Path(data) if data is not None else None, manifest.classes)
    rep.task("preprocess", len(evalset))
    x, kept = evalset.load(manifest.preprocess, rep.advance)
    rep.task("evaluate", len(kept))
    with TorchEngine(run_dir, input_shape=x.shape[1:], num_outputs=len(manifest.classes)) as engine:
        logits = engine.run(x, 32, rep.advance)
    metrics = classification_metrics(kept.label_indices(manifest.classes), logits.argmax(1), manifest.classes)
    out = run_dir / ("eval.json" if data is None else f"eval-{Path(data).name}.json")
    metrics.write(out)
    return metrics, out, run_dir
