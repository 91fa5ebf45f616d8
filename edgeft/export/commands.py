"""CLI verb `edgeft export RUN`: parse options, show progress, print the artifact table and the bundle path."""

from __future__ import annotations

import math
from pathlib import Path

import typer


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_table(console, result) -> None:
    """artifact | precision | size MB | test accuracy | top-1 agreement | delta acc pts | status."""
    from rich.table import Table

    table = Table(title="edgeft export", show_lines=False)
    table.add_column("artifact", no_wrap=True)
    for col in ("precision", "size MB", "test acc", "agree w/ torch", "Δacc pts"):
        table.add_column(col, justify="left" if col == "precision" else "right")
    table.add_column("status", overflow="fold")
    for r in result.rows:
        style = "red" if r.status == "rejected" else ("dim" if r.status == "reference" else "")
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        table.add_row(
            r.artifact,
            r.precision,
            _fmt(r.size_mb, ".1f"),
            _fmt(100 * r.accuracy, ".2f"),
            _fmt(100 * r.agreement, ".2f") + ("%" if not math.isnan(r.agreement) else ""),
            _fmt(r.delta_pts, "+.2f"),
            status,
            style=style,
        )
    console.print(table)
    for r in result.rows:
        if r.status == "rejected":
            console.print(f"[bold red]rejected:[/] {r.artifact}: {r.reason}", highlight=False)


def export(
    run: Path = typer.Argument(
        ..., help="Run dir written by `edgeft train` (model.json, model.safetensors, splits.json)."
    ),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Calibrate and build INT8 artifacts (calib split)."),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="Build FP16 artifacts (OpenVINO IR, TensorRT)."),
    formats: str = typer.Option(
        None,
        "--formats",
        help="Comma-separated subset of onnx,openvino,tensorrt,triton; default: all this machine can build.",
    ),
    calib_size: int = typer.Option(
        300, "--calib-size", help="Calibration images (class-stratified from the calib split)."
    ),
    calib_method: str = typer.Option("minmax", "--calib-method", help="minmax | entropy | percentile."),
    max_drop: float = typer.Option(
        None,
        "--max-drop",
        help="Max test-accuracy loss (points) of an INT8/FP16 artifact [default 1.0]. Given explicitly, it also "
        "turns on NNCF accuracy control (val split).",
    ),
    out: Path = typer.Option(None, "--out", help="Bundle dir [default: RUN/bundle]."),
    force: bool = typer.Option(False, "--force", help="Replace an out dir holding another model's bundle."),
) -> None:
    """Export a trained run to a deployable bundle: ONNX FP32/INT8, OpenVINO IR, TensorRT plans, Triton repo."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgeft.export.bundle import build_bundle
    from edgeft.export.errors import ExportAccuracyError

    console = Console()
    wanted = [f.strip().lower() for f in formats.split(",") if f.strip()] if formats else None
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as prog:
        task = prog.add_task("export", total=None)
        result = build_bundle(
            run,
            out,
            int8=int8,
            fp16=fp16,
            formats=wanted,
            calib_size=calib_size,
            calib_method=calib_method,
            max_drop=1.0 if max_drop is None else max_drop,
            accuracy_control=max_drop is not None,
            force=force,
            progress=lambda msg: prog.update(task, description=msg),
        )
    for line in result.notes:
        console.print(f"[yellow]note:[/] {line}", highlight=False)
    print_table(console, result)
    console.print(f"[bold green]Bundle written to:[/] {result.bundle_dir}", highlight=False)
    if result.failed:
        raise ExportAccuracyError(
            f"artifact(s) {', '.join(result.failed)} failed their check and were left out of bundle.json "
            "(files kept under rejected/ for inspection)",
            path=result.bundle_dir / "export_report.json",
            fix="try --calib-method entropy or percentile, a larger --calib-size, or --max-drop PTS to let NNCF "
            "keep the most sensitive layers in float",
        )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
