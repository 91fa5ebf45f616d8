"""`edgeft parity`: every exported backend against the reference model, judged by the one gate (exit 1 on a miss)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeft.cli import console
from edgeft.core.errors import GateFailed


def split_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()] or None


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


PARITY_COLUMNS = (
    console.Col("backend/artifact", "left", split="/"),
    console.Col("gate", "left"),
    console.Col("agree"),
    console.Col("95% CI", drop=1),
    console.Col("Δacc"),
    console.Col("max|Δ|"),
)


def render_parity(report) -> None:
    """The parity table: one row per backend/artifact, agreement with its interval, the gate's verdict."""
    from rich.markup import escape

    rows = []
    for name, b in report.backends.items():
        verdict = "[green]pass[/]" if b.gate.passed else f"[red]{escape(b.gate.verdict.upper())}[/]"
        c = b.comparison
        if c is None:
            rows.append([escape(name), verdict, "—", "—", "—", "—"])
            continue
        rows.append(
            [
                escape(name),
                verdict,
                _fmt(c.agreement, ".4f"),
                f"{c.agreement_low:.3f}-{c.agreement_high:.3f}",
                _fmt(c.delta_accuracy_pts, "+.2f"),
                _fmt(c.max_abs_logit_diff, ".1e"),
            ]
        )
    table = console.fitted_table(f"parity vs {report.reference} on {report.n_images} images", PARITY_COLUMNS, rows)
    console.out().print(table)
    console.say(f"images: {report.data}")
    if report.preprocess == "fast":
        console.say("backends' inputs: --fast-preprocess (the reference's: THE preprocessing; not cached)")
    if report.reference_note:
        console.say(f"reference: {report.reference_note}")
    reused = sum(b.cached for b in report.backends.values())
    if reused:
        console.say(
            f"reused {reused} artifact evaluation(s) from the cache (export or an earlier parity filled it); "
            "--no-cache re-runs them"
        )
    for key, why in report.skipped_backends.items():
        console.say(f"skipped {key}: {why}", "yellow")
    if report.skipped_images:
        console.say(f"{len(report.skipped_images)} image(s) could not be read (listed in parity.json)", "yellow")
    for f in report.failures():
        console.say(f"✗ {f}", "red")


def parity(
    target: Path = typer.Argument(
        None, help="A bundle dir, a run dir (its bundle is looked up), or nothing: the latest run."
    ),
    data: Path = typer.Option(None, "--data", help="Class-per-folder image tree instead of the run's test split."),
    backends: str = typer.Option(
        None, "--backends", help="Comma list of backends/artifacts/precisions, e.g. 'openvino,onnx-int8'."
    ),
    min_agreement: float = typer.Option(
        None,
        "--min-agreement",
        min=0.0,
        max=1.0,
        help="INT8/FP16/BF16 top-1 agreement floor [default: the bundle's gate, 0.99].",
    ),
    max_drop: float = typer.Option(
        None, "--max-drop", min=0.0, help="Largest allowed accuracy drop in points [default: the bundle's gate, 1.0]."
    ),
    logit_tol: float = typer.Option(
        None, "--logit-tol", min=0.0, help="Largest allowed FP32 |Δlogit| [default: 1e-4]."
    ),
    min_n: int = typer.Option(
        None,
        "--min-n",
        min=1,
        help="Fewest images that certify a reduced precision [default: derived from --min-agreement, 381 at 0.99].",
    ),
    out: Path = typer.Option(
        None, "--out", help="Directory for parity.json / parity.fast.json (default: the bundle dir)."
    ),
    reference: str = typer.Option(
        "auto", "--reference", help="auto (torch if available, else ONNX FP32), torch, onnx."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per engine call."),
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        help="Run the reference and every engine again instead of reusing the logits export (or an earlier "
        "parity) computed for the same files, settings and images.",
    ),
    fast_preprocess: bool = typer.Option(
        False,
        "--fast-preprocess",
        help="Feed the backends serving's --fast-preprocess inputs (the reference keeps THE preprocessing): "
        "judges the whole fast serving path; FP32 must then agree on >= 99.9% of images.",
    ),
) -> None:
    """Check that every exported backend x precision agrees with the reference model (exit 1 on a gate miss)."""
    from edgeft.check.parity import run_parity

    overrides = {"min_agreement": min_agreement, "max_drop": max_drop, "logit_tol": logit_tol, "min_n": min_n}
    with console.reporting() as rep:
        report = run_parity(
            target,
            data,
            split_list(backends),
            None,
            out,
            reference=reference,
            batch_size=batch_size,
            use_cache=not no_cache,
            gate_overrides=overrides,
            reporter=rep,
            fast_preprocess=fast_preprocess,
        )
    if target is None:
        console.labelled("Bundle", f"{report.bundle_dir} (of the latest run under runs/)", stderr=True)
    elif Path(report.bundle_dir).resolve() != Path(target).resolve():
        console.labelled("Bundle", f"{report.bundle_dir} (exported from {target})", stderr=True)
    render_parity(report)
    from edgeft.check.parity import flips_picture
    from edgeft.core.reports import parity_file

    fast = report.preprocess == "fast"
    path = Path(out or report.bundle_dir) / parity_file(fast)
    flips = path.with_name(flips_picture(fast))
    if flips.is_file():
        console.outputs("flipped images", flips)
    if not report.passed:
        fix = "serve an artifact that passed, or re-export (see `edgeft export --help` for INT8 options)"
        if fast:
            exact = _exact_verdicts(path.with_name(parity_file(False)), report.bundle_sha256)
            failed = [k for k, b in report.backends.items() if not b.gate.passed]
            if exact is None:
                fix += "; run `edgeft parity` without --fast-preprocess to tell whether the fast path is to blame"
            elif not report.checks and all(exact.get(k) for k in failed):
                fix = (
                    "these artifacts pass `edgeft parity` with THE preprocessing: serve them without "
                    "--fast-preprocess (serve warns while this file shows the running one failed)"
                )
        raise GateFailed("parity FAILED: see the reasons above", path=path, fix=fix)
    console.say("parity passed", "green")
    console.outputs(path.name, path)


def register(app: typer.Typer) -> None:
    app.command("parity", short_help="Check that every exported backend agrees with the model.")(parity)


def _exact_verdicts(path: Path, bundle_sha256: str | None) -> dict[str, bool] | None:
    """{backend key: passed} of the exact-preprocessing parity.json beside a fast one, when it judged this bundle."""
    from edgeft.core.errors import EdgeftError
    from edgeft.core.reports import ParityReport

    if not path.is_file():
        return None
    try:
        report = ParityReport.load(path)
    except EdgeftError:
        return None
    if report.bundle_sha256 != bundle_sha256 or report.checks:
        return None
    return {k: b.gate.passed for k, b in report.backends.items()}
