"""`edgeft export [RUN]`: parse options, export with a progress bar, print the artifact table and the bundle path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edgeft.cli import console
from edgeft.core.errors import EdgeftError, GateFailed

if TYPE_CHECKING:
    from edgeft.export.bundle import ExportResult


def _pct(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}"


EXPORT_COLUMNS = (
    console.Col("artifact", "left"),
    console.Col("precision", "left", drop=2),
    console.Col("MB"),
    console.Col("acc%"),
    console.Col("agree%"),
    console.Col("95% CI", drop=1),
    console.Col("gate", "left"),
)


def render_export(result: ExportResult) -> None:
    """artifact | precision | MB | accuracy | agreement (95% CI) | gate, then the reasons for rejected ones."""
    from rich.markup import escape

    report = result.report
    rows = []
    for r in result.rows:
        c = r.comparison
        if r.status == "reference":
            verdict = "[dim]ref[/]"
        elif r.gate is not None and r.gate.passed:
            verdict = "[green]pass[/]"
        else:
            verdict = f"[red]{escape((r.gate.verdict if r.gate else r.status).upper())}[/]"
        ci = "—" if c is None or r.status == "reference" else f"{_pct(c.agreement_low, 1)}-{_pct(c.agreement_high, 1)}"
        rows.append(
            [
                escape(r.artifact),
                escape(r.precision),
                f"{r.size_mb:.2f}",
                _pct(r.accuracy),
                _pct(r.agreement),
                ci,
                verdict,
            ]
        )
    title = f"edgeft export: judged on {report.eval_images} {report.eval_split} images"
    table = console.fitted_table(title, EXPORT_COLUMNS, rows)
    console.out().print(table)
    artifacts = {r.artifact for r in result.rows}
    for name, why in result.failed.items():
        console.labelled(f"{'rejected' if name in artifacts else 'failed'} {name}", why, "bold red")


def export(
    run: Path = typer.Argument(None, help="Run dir written by `edgeft train` [default: the latest run under runs/]."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Calibrate and build INT8 artifacts (calib split)."),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="Build FP16 artifacts (OpenVINO IR, TensorRT)."),
    formats: str = typer.Option(
        None,
        "--formats",
        help="Comma-separated subset of onnx,openvino,tensorrt,triton [default: all this machine can build].",
    ),
    calib_size: int = typer.Option(
        300, "--calib-size", min=1, help="Calibration images (class-stratified, calib split)."
    ),
    calib_method: str = typer.Option("minmax", "--calib-method", help="minmax | entropy | percentile."),
    max_drop: float = typer.Option(
        None,
        "--max-drop",
        min=0.0,
        help="Max accuracy loss (points) of an INT8/FP16 artifact [default 1.0]. Given explicitly, it also turns "
        "on NNCF accuracy control (val split).",
    ),
    out: Path = typer.Option(None, "--out", help="Bundle dir [default: RUN/bundle]."),
    force: bool = typer.Option(
        False, "--force", help="Replace an out dir holding another model's edgeft bundle (never anything else)."
    ),
    min_agreement: float = typer.Option(
        0.99,
        "--min-agreement",
        min=0.0,
        max=1.0,
        help="Top-1 agreement with PyTorch an INT8/FP16/BF16 artifact needs to ship.",
    ),
    min_n: int = typer.Option(
        None,
        "--min-n",
        min=1,
        help="Fewest test images that certify a reduced precision [default: derived from --min-agreement, "
        "381 at 0.99]; below it nothing but FP32 ships.",
    ),
) -> None:
    """Export a trained run to a deployable bundle: ONNX FP32/INT8, OpenVINO IR, TensorRT plans, Triton repo."""
    from edgeft.core.locate import locate
    from edgeft.export.bundle import build_bundle

    where = locate(run, need_bundle=False)
    if where.run_dir is None:
        raise EdgeftError(
            "this bundle's run dir is not on this machine, so there is nothing to export",
            path=run,
            fix="pass the run dir written by `edgeft train`",
        )
    if where.chosen:
        console.labelled("Run", f"{where.run_dir.resolve()} (the latest under runs/)", stderr=True)
    wanted = [f.strip().lower() for f in formats.split(",") if f.strip()] if formats else None
    with console.reporting() as rep:
        result = build_bundle(
            where.run_dir,
            out,
            int8=int8,
            fp16=fp16,
            formats=wanted,
            calib_size=calib_size,
            calib_method=calib_method,
            max_drop=1.0 if max_drop is None else max_drop,
            accuracy_control=max_drop is not None,
            force=force,
            min_agreement=min_agreement,
            min_n=min_n,
            reporter=rep,
        )
    render_export(result)
    console.outputs("Bundle written to", result.bundle_dir)
    if result.failed:
        raise GateFailed(
            f"{len(result.failed)} artifact(s) failed and were left out of bundle.json: {', '.join(result.failed)} "
            "(their files are kept under rejected/)",
            path=result.bundle_dir / "export_report.json",
            fix="the artifacts that passed are in the bundle; tradeoff.png shows what INT8 agreement each speed "
            "costs; --max-drop PTS lets NNCF keep its most damaging layers in float",
        )


def register(app: typer.Typer) -> None:
    app.command("export", short_help="Export a run to a bundle: ONNX, INT8, OpenVINO, Triton.")(export)
