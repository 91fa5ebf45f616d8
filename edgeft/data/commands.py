"""CLI verbs of the data stage: `edgeft data synth` and `edgeft data inspect`."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Generate or inspect datasets.", no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Directory to write Fish_Dataset/ into."),
    per_class: int = typer.Option(150, "--per-class", help="Images per species."),
    seed: int = typer.Option(0, "--seed"),
    species: str = typer.Option(None, "--species", help="Comma-separated subset of the 9 species."),
    width: int = typer.Option(320, "--width"),
    height: int = typer.Option(240, "--height"),
) -> None:
    """Write the SYNTHETIC fish dataset in the Large-Scale Fish Dataset layout."""
    from rich.console import Console
    from rich.progress import Progress

    from edgeft.data.synth import generate_dataset
    from edgeft.errors import EdgeftError

    if per_class < 1:
        raise EdgeftError("--per-class must be >= 1", fix="pass a positive number")
    console = Console()
    names = [s.strip() for s in species.split(",")] if species else None
    with Progress(console=console) as prog:
        t = prog.add_task("synth", total=None)
        root = generate_dataset(
            out,
            per_class=per_class,
            seed=seed,
            image_size=(width, height),
            species=names,
            progress=lambda d, n: prog.update(t, completed=d, total=n),
        )
    console.print("These images are SYNTHETIC (procedural fish), not photographs.")
    console.print(f"[bold green]Dataset written to:[/] {root}")


@data_app.command("inspect")
def inspect(
    root: Path = typer.Argument(..., help="Dataset root (any supported layout)."),
    out: Path = typer.Option(None, "--out", help="Where to write the report (default ROOT/../<name>_inspect)."),
    group_regex: str = typer.Option(None, "--group-regex"),
) -> None:
    """Class balance, skipped files and near-duplicate groups, with a bar chart and a sample grid."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from edgeft.data.inspect import inspect_dataset

    console = Console()
    with Progress(console=console) as prog:
        t = prog.add_task("scan", total=None)
        report, out_dir = inspect_dataset(
            root, out, group_regex, progress=lambda d, n: prog.update(t, completed=d, total=n)
        )
    table = Table(title=f"{report['root']} ({report['layout']} layout)")
    for col in ("class", "images", "dup groups", "largest group"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for c, row in report["classes"].items():
        table.add_row(c, str(row["images"]), str(row["groups"]), str(row["largest_group"]))
    console.print(table)
    console.print(
        f"balance (min/max images per class): {report['balance']:.2f}; skipped files: {len(report['skipped'])}; "
        f"images in near-duplicate groups: {report['images_in_duplicate_groups']}"
    )
    for s in report["skipped"][:10]:
        console.print(f"  skipped {s['path']}: {s['reason']}")
    console.print(f"[bold green]Report written to:[/] {out_dir}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
