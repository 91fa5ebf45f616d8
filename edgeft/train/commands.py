"""CLI verbs of the training stage: `edgeft train fish|folder` and `edgeft eval`."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeft.errors import EdgeftError

train_app = typer.Typer(help="Fine-tune a frozen-backbone classifier; writes a run dir.", no_args_is_help=True)


def _species(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    if len(set(names)) != len(names):
        raise EdgeftError(f"--species lists a name twice: {names}", fix="list each species once")
    return names


def _hidden(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise EdgeftError(
            f"--hidden {value!r} is not a comma-separated list of integers", fix="e.g. --hidden 256 or --hidden 512,128"
        ) from None


def _run(task: str, **kw) -> None:
    from rich.console import Console

    from edgeft.data.splits import SplitFractions
    from edgeft.train.run import TrainConfig, train

    console = Console()
    if kw["epochs"] < 1 or kw["finetune_epochs"] < 0:
        raise EdgeftError("--epochs must be >= 1 and --finetune-epochs >= 0", fix="pass positive epoch counts")
    cfg = TrainConfig(
        task=task,
        data=kw["data"],
        species=_species(kw["species"]),
        init=kw["init"],
        backbone=kw["backbone"],
        backbone_weights=kw["backbone_weights"],
        epochs=kw["epochs"],
        finetune_epochs=kw["finetune_epochs"],
        finetune_blocks=kw["finetune_blocks"],
        lr=kw["lr"],
        batch_size=kw["batch_size"],
        hidden=_hidden(kw["hidden"]),
        dropout=kw["dropout"],
        patience=kw["patience"],
        seed=kw["seed"],
        out=kw["out"],
        name=kw["name"],
        device=kw["device"],
        fractions=SplitFractions(kw["val_frac"], kw["calib_frac"], kw["test_frac"]),
        group_regex=kw["group_regex"],
        synth_per_class=kw["synth_per_class"],
    )
    result = train(cfg, console)
    acc = result.metrics["test"]["accuracy"]
    note = " (synthetic data)" if result.synthetic else ""
    console.print(f"[bold green]Run dir:[/] {result.run_dir}")
    console.print(f"[bold]Test accuracy:[/] {acc:.4f}{note}  macro-F1 {result.metrics['test']['f1_macro']:.4f}")


def _common(
    data: Path | None,
    species: str | None,
    init: Path | None,
    backbone: str,
    backbone_weights: Path | None,
    epochs: int,
    finetune_epochs: int,
    finetune_blocks: int,
    lr: float,
    batch_size: int,
    hidden: str,
    dropout: float,
    patience: int,
    seed: int,
    out: Path,
    name: str | None,
    device: str,
    val_frac: float,
    calib_frac: float,
    test_frac: float,
    group_regex: str | None,
    synth_per_class: int,
) -> dict:
    return dict(locals())


_OPTS = dict(
    species=typer.Option(None, "--species", help='Comma-separated class names, e.g. "Red Mullet,Sea Bass".'),
    init=typer.Option(None, "--init", help="Transfer from RUN: keep its feature extractor frozen, learn a new head."),
    backbone=typer.Option(
        "efficientnet_lite0",
        "--backbone",
        help="efficientnet_lite0 | resnet18 | mobilenet_v3_large | small_cnn | any timm name.",
    ),
    backbone_weights=typer.Option(
        None, "--backbone-weights", help="Local weights file (.safetensors/.pth) for the backbone."
    ),
    epochs=typer.Option(40, "--epochs", help="Head epochs (early stopping on val loss)."),
    finetune_epochs=typer.Option(0, "--finetune-epochs", help="Phase 2: epochs with the top blocks unfrozen."),
    finetune_blocks=typer.Option(2, "--finetune-blocks", help="How many top backbone blocks phase 2 unfreezes."),
    lr=typer.Option(3e-3, "--lr"),
    batch_size=typer.Option(64, "--batch-size"),
    hidden=typer.Option("256", "--hidden", help="Head hidden sizes, comma-separated; empty for linear."),
    dropout=typer.Option(0.3, "--dropout"),
    patience=typer.Option(8, "--patience", help="Early-stopping patience in epochs."),
    seed=typer.Option(0, "--seed"),
    out=typer.Option(Path("runs"), "--out", help="Runs root; the run dir is OUT/<task>/<name>."),
    name=typer.Option(None, "--name", help="Run name (default exp, exp2, ...)."),
    device=typer.Option("auto", "--device", help="auto | cpu | cuda"),
    val_frac=typer.Option(0.15, "--val-frac"),
    calib_frac=typer.Option(0.10, "--calib-frac"),
    test_frac=typer.Option(0.20, "--test-frac"),
    group_regex=typer.Option(
        None, "--group-regex", help="Regex whose first group is a near-duplicate key (e.g. a track id)."
    ),
    synth_per_class=typer.Option(150, "--synth-per-class", help="Images per species of the synthetic default."),
)


@train_app.command("fish")
def train_fish(
    data: Path = typer.Option(
        None, "--data", help="Fish_Dataset root (or its parent); default: embedded synthetic fish."
    ),
    species: str = _OPTS["species"],
    init: Path = _OPTS["init"],
    backbone: str = _OPTS["backbone"],
    backbone_weights: Path = _OPTS["backbone_weights"],
    epochs: int = _OPTS["epochs"],
    finetune_epochs: int = _OPTS["finetune_epochs"],
    finetune_blocks: int = _OPTS["finetune_blocks"],
    lr: float = _OPTS["lr"],
    batch_size: int = _OPTS["batch_size"],
    hidden: str = _OPTS["hidden"],
    dropout: float = _OPTS["dropout"],
    patience: int = _OPTS["patience"],
    seed: int = _OPTS["seed"],
    out: Path = _OPTS["out"],
    name: str = _OPTS["name"],
    device: str = _OPTS["device"],
    val_frac: float = _OPTS["val_frac"],
    calib_frac: float = _OPTS["calib_frac"],
    test_frac: float = _OPTS["test_frac"],
    group_regex: str = _OPTS["group_regex"],
    synth_per_class: int = _OPTS["synth_per_class"],
) -> None:
    """Train a fish-species classifier (Large-Scale Fish Dataset layout, or the synthetic default)."""
    _run("fish", **_common(**locals()))


@train_app.command("folder")
def train_folder(
    data: Path = typer.Option(..., "--data", help="Class-per-folder or train/val/test tree."),
    species: str = _OPTS["species"],
    init: Path = _OPTS["init"],
    backbone: str = _OPTS["backbone"],
    backbone_weights: Path = _OPTS["backbone_weights"],
    epochs: int = _OPTS["epochs"],
    finetune_epochs: int = _OPTS["finetune_epochs"],
    finetune_blocks: int = _OPTS["finetune_blocks"],
    lr: float = _OPTS["lr"],
    batch_size: int = _OPTS["batch_size"],
    hidden: str = _OPTS["hidden"],
    dropout: float = _OPTS["dropout"],
    patience: int = _OPTS["patience"],
    seed: int = _OPTS["seed"],
    out: Path = _OPTS["out"],
    name: str = _OPTS["name"],
    device: str = _OPTS["device"],
    val_frac: float = _OPTS["val_frac"],
    calib_frac: float = _OPTS["calib_frac"],
    test_frac: float = _OPTS["test_frac"],
    group_regex: str = _OPTS["group_regex"],
    synth_per_class: int = _OPTS["synth_per_class"],
) -> None:
    """Train on any class-per-folder (or pre-split) image tree."""
    _run("folder", **_common(**locals()))


def eval_cmd(
    run: Path = typer.Argument(..., help="Run dir written by `edgeft train`."),
    data: Path = typer.Option(None, "--data", help="Evaluate on this tree instead of the run's test split."),
) -> None:
    """Recompute metrics of a run on its test split, or on another image tree."""
    from rich.console import Console

    from edgeft.train.evaluate import evaluate_run

    console = Console()
    result, out = evaluate_run(run, data)
    console.print(f"[bold]Accuracy:[/] {result['accuracy']:.4f}  macro-F1 {result['f1_macro']:.4f}  (n={result['n']})")
    console.print(f"[bold green]Metrics written to:[/] {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("eval")(eval_cmd)
