"""`edgeft data synth` and `edgeft data inspect`."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeft.cli import console
from edgeft.core.errors import EdgeftError

data_app = typer.Typer(help="Generate or inspect datasets.", no_args_is_help=True)


@data_app.command("synth", short_help="Write the SYNTHETIC fish dataset (Kaggle layout).")
def synth(
    out: Path = typer.Option(..., "--out", help="Directory to write Fish_Dataset/ into."),
    per_class: int = typer.Option(150, "--per-class", help="Images per species."),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
    species: str = typer.Option(None, "--species", help="Comma-separated subset of the 9 species."),
    width: int = typer.Option(320, "--width", help="Image width in pixels."),
    height: int = typer.Option(240, "--height", help="Image height in pixels."),
) -> None:
    """Write the SYNTHETIC fish dataset in the Large-Scale Fish Dataset layout."""
    from edgeft.data.synth import generate_dataset

    if per_class < 1:
        raise EdgeftError("--per-class must be >= 1", fix="pass a positive number")
    names = [s.strip() for s in species.split(",")] if species else None
    with console.reporting() as rep:
        rep.task("synth", None)
        root = generate_dataset(
            out, per_class=per_class, seed=seed, image_size=(width, height), species=names, progress=rep.update
        )
    console.say("These images are SYNTHETIC (procedural fish), not photographs.")
    console.outputs("Dataset written to", root)


@data_app.command("inspect", short_help="Class balance, skipped files and groups of a dataset.")
def inspect(
    root: Path = typer.Argument(..., help="Dataset root (any supported layout)."),
    out: Path = typer.Option(None, "--out", help="Where to write the report (default ROOT/../<name>_inspect)."),
    group_regex: str = typer.Option(None, "--group-regex", help="Regex whose first group is a group key."),
    grouping: str = typer.Option("auto", "--grouping", help="auto | content | tracks | none (see `train`)."),
) -> None:
    """Class balance, skipped files and groups, with a bar chart, a sample grid and the largest groups."""
    from rich.markup import escape

    from edgeft.data.inspect import inspect_dataset

    with console.reporting() as rep:
        rep.task("scan", None)
        report, out_dir = inspect_dataset(root, out, group_regex, progress=rep.update, grouping=grouping)
    columns = (
        console.Col("class", "left"),
        console.Col("images"),
        console.Col("groups"),
        console.Col("largest\ngroup"),
    )
    rows = [
        [escape(c), str(row["images"]), str(row["groups"]), str(row["largest_group"])]
        for c, row in report["classes"].items()
    ]
    console.out().print(console.fitted_table(f"{report['root']} ({report['layout']} layout)", columns, rows))
    console.say(
        f"balance (min/max images per class): {report['balance']:.2f}; skipped files: {len(report['skipped'])}; "
        f"images in near-duplicate groups: {report['images_in_duplicate_groups']}"
    )
    console.say(f"groups: {report['grouping']['source']}; {report['grouping']['note']}")
    for w in report["grouping"]["warnings"][:10]:
        console.say(f"  warning: {w}")
    for c in report["conflicts"][:10]:
        console.say(f"  same image under two classes (kept out): {' and '.join(c['paths'])}")
    for s in report["skipped"][:10]:
        console.say(f"  skipped {s['path']}: {s['reason']}")
    console.outputs("Report written to", out_dir)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
