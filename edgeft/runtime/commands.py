"""`edgeft parity`, `edgeft bench` and `edgeft predict`: thin typer wrappers over the runtime library."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _split_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()] or None


def parity(
    target: Path = typer.Argument(..., help="A bundle dir (bundle.json) or a run dir (its bundle is looked up)."),
    data: Path | None = typer.Option(
        None, "--data", help="Class-per-folder image tree instead of the run's test split."
    ),
    backends: str | None = typer.Option(
        None, "--backends", help="Comma list of backends/artifacts/precisions, e.g. 'openvino,onnx-int8'."
    ),
    min_agreement: float | None = typer.Option(None, "--min-agreement", help="INT8/FP16 top-1 agreement floor (0.99)."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="Largest allowed accuracy drop in points (INT8/FP16)."),
    logit_tol: float = typer.Option(1e-4, "--logit-tol", help="Largest allowed FP32 |Δlogit|."),
    out: Path | None = typer.Option(None, "--out", help="Directory for parity.json (default: the bundle dir)."),
    reference: str = typer.Option(
        "auto", "--reference", help="auto (torch if available, else ONNX FP32), torch, onnx."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per engine call."),
) -> None:
    """Check that every exported backend x precision agrees with the reference model (exit 1 on a gate miss)."""
    from edgeft.runtime.parity import render_report, run_parity

    report = run_parity(
        target,
        data=data,
        backends=_split_list(backends),
        min_agreement=min_agreement,
        max_drop=max_drop,
        logit_tol=logit_tol,
        out=out,
        reference=reference,
        batch_size=batch_size,
        progress=True,
    )
    render_report(report)
    if not report.passed:
        raise typer.Exit(1)


def bench(
    bundle: Path = typer.Argument(..., help="A bundle dir (or a run dir whose bundle is looked up)."),
    batch: str = typer.Option("1,8,32", "--batch", help="Comma list of batch sizes."),
    backends: str | None = typer.Option(None, "--backends", help="Comma list of backends/artifacts/precisions."),
    seconds: float = typer.Option(2.0, "--seconds", help="Measured seconds per backend x batch (and per mode)."),
    out: Path | None = typer.Option(None, "--out", help="bench.json path (default: <bundle>/bench.json)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed runs before measuring."),
    workers: int | None = typer.Option(None, "--workers", help="Decode/preprocess threads for the e2e path."),
    hint: str | None = typer.Option(None, "--hint", help="OpenVINO PERFORMANCE_HINT: LATENCY or THROUGHPUT."),
    torch_baseline: bool = typer.Option(False, "--torch", help="Also measure the run's torch FP32 model."),
) -> None:
    """Throughput, latency, pipeline overhead, size and memory of every backend x precision x batch size."""
    from edgeft.runtime.bench import render_bench, run_bench

    report = run_bench(
        bundle,
        batches=batch,
        backends=_split_list(backends),
        seconds=seconds,
        out=out,
        warmup=warmup,
        workers=workers,
        include_torch=torch_baseline,
        backend_options={"hint": hint} if hint else None,
        progress=True,
    )
    render_bench(report)


def predict(
    bundle: Path = typer.Argument(..., help="A bundle dir."),
    images: list[Path] = typer.Argument(..., help="Image files (unreadable ones get an 'error' line)."),
    backend: str = typer.Option(
        "auto", "--backend", help="auto, onnxruntime[:cpu|cuda|tensorrt], openvino[:CPU|GPU|NPU|AUTO], tensorrt, torch."
    ),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8."),
    topk: int = typer.Option(5, "--topk", help="How many classes to list per image."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per engine call."),
    logits: bool = typer.Option(False, "--logits", help="Include raw logits in each line."),
) -> None:
    """Classify images and print one JSON line per image (the backend used goes to stderr)."""
    from rich.console import Console

    from edgeft.runtime.predictor import Predictor

    with Predictor(bundle, backend=backend, precision=precision, batch_size=batch_size, topk=topk) as predictor:
        Console(stderr=True).print(f"backend: {predictor.describe()}", highlight=False)
        for pred in predictor.predict_iter(images):
            typer.echo(json.dumps(pred.to_dict(with_logits=logits)))


def register(app: typer.Typer) -> None:
    """Add the runtime commands to the edgeft CLI."""
    app.command("parity")(parity)
    app.command("bench")(bench)
    app.command("predict")(predict)
