"""`edgeft train fish|folder` and `edgeft eval`: parse, call edgeft.train, print where the outputs are."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from edgeft.cli import console
from edgeft.core.errors import EXIT_INTERRUPTED, EdgeftError
from edgeft.data.synth import DEFAULT_PER_CLASS

train_app = typer.Typer(help="Fine-tune a frozen-backbone classifier; writes a run dir.", no_args_is_help=True)


def _names(value: str | None) -> list[str] | None:
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


# Every training option, defined once for both `train fish` and `train folder`.
OPTIONS = {
    "species": typer.Option(None, "--species", help='Comma-separated class names, e.g. "Red Mullet,Sea Bass".'),
    "init": typer.Option(
        None, "--init", help="Transfer from RUN: keep its feature extractor frozen, learn a new head."
    ),
    "backbone": typer.Option(
        "efficientnet_lite0",
        "--backbone",
        help="efficientnet_lite0 | resnet18 | mobilenet_v3_large | small_cnn | tinynet | a timm name.",
    ),
    "backbone_weights": typer.Option(None, "--backbone-weights", help="Local weights file (.safetensors/.pth)."),
    "epochs": typer.Option(40, "--epochs", help="Head epochs (early stopping on val loss)."),
    "finetune_epochs": typer.Option(0, "--finetune-epochs", help="Phase 2: epochs with the top blocks unfrozen."),
    "finetune_blocks": typer.Option(2, "--finetune-blocks", help="How many top backbone blocks phase 2 unfreezes."),
    "lr": typer.Option(3e-3, "--lr", help="Head learning rate."),
    "batch_size": typer.Option(64, "--batch-size", help="Training batch size."),
    "hidden": typer.Option("256", "--hidden", help="Head hidden sizes, comma-separated; empty for linear."),
    "dropout": typer.Option(0.3, "--dropout", help="Head dropout."),
    "patience": typer.Option(8, "--patience", help="Early-stopping patience in epochs."),
    "seed": typer.Option(0, "--seed", help="Seed of splits, initialisation and shuffling."),
    "out": typer.Option(Path("runs"), "--out", help="Runs root; the run dir is OUT/<task>/<name>."),
    "name": typer.Option(None, "--name", help="Run name (default exp, exp2, ...)."),
    "overwrite": typer.Option(
        False,
        "--overwrite",
        help="Replace an existing run of this --name once the new one is complete; without --resume, also "
        "discard the checkpoint an interrupted training of this name left.",
    ),
    "resume": typer.Option(
        False,
        "--resume",
        help="Continue the interrupted (killed, Ctrl-C) training of this --name from its checkpoint "
        "(OUT/<task>/.NAME.resume, saved as it trains) with the same options; the result equals an "
        "uninterrupted run. A name with a checkpoint is refused without --resume or --overwrite.",
    ),
    "device": typer.Option("auto", "--device", help="auto | cpu | cuda"),
    "val_frac": typer.Option(0.15, "--val-frac", help="Fraction of each class for validation."),
    "calib_frac": typer.Option(0.10, "--calib-frac", help="Fraction of each class held out for INT8 calibration."),
    "test_frac": typer.Option(0.20, "--test-frac", help="Fraction of each class for the test split."),
    "group_regex": typer.Option(
        None, "--group-regex", help="Regex whose first group is a group key (e.g. a track id)."
    ),
    "synth_per_class": typer.Option(
        DEFAULT_PER_CLASS, "--synth-per-class", help="Images per species of the synthetic default."
    ),
    "grouping": typer.Option(
        "auto",
        "--grouping",
        help="auto (file-name track keys + verified flips/rotations/crops) | content | tracks | none.",
    ),
    "head": typer.Option("auto", "--head", help="auto (linear and MLP, chosen on val) | linear | mlp."),
    "weight_decay": typer.Option(1e-4, "--weight-decay", help="Head weight decay (linear head: at least 1e-3)."),
    "refit": typer.Option(
        True, "--refit/--no-refit", help="Refit the chosen head on train+val for its best epoch count."
    ),
    "crop": typer.Option(
        "auto", "--crop", help="auto (squash wide images, else the backbone's rule) | center | squash."
    ),
    "resampler": typer.Option(
        "auto",
        "--resampler",
        help="auto (opencv; with --init, that run's) | opencv (bit-exact on every platform, fast) | pil "
        "(torchvision's filter, several times the cost).",
    ),
    "augment": typer.Option(
        "none", "--augment", help="Cached views the head also learns from: none | hflip (mirrored train/val)."
    ),
    "false_reject_rate": typer.Option(
        0.05, "--false-reject-rate", help="Share of correct held-out answers the unknown threshold may reject."
    ),
}


def training_config(task: str, data: Path | None, **kw):
    """The TrainConfig of the command line, or one clear error (TrainConfig checks its own values)."""
    from edgeft.data.splits import SplitFractions
    from edgeft.train.run import TrainConfig

    return TrainConfig(
        task=task,
        data=data,
        species=_names(kw.pop("species")),
        hidden=_hidden(kw.pop("hidden")),
        fractions=SplitFractions(kw.pop("val_frac"), kw.pop("calib_frac"), kw.pop("test_frac")),
        **kw,
    )


def run_training(task: str, data: Path | None, **kw) -> None:
    from edgeft.train.distributed import env_rank
    from edgeft.train.run import train

    rank = env_rank()
    if rank != 0:  # another rank of `torchrun ... edgeft train`: quiet, rank 0 reports
        _other_rank(rank, task, data, kw)
        return
    cfg = training_config(task, data, **kw)
    with console.reporting() as rep:
        result = train(cfg, rep)
    test = result.metrics.test
    note = " (synthetic data)" if result.synthetic else ""
    console.labelled("Test accuracy", f"{test.accuracy:.4f}{note}  macro-F1 {test.f1_macro:.4f}  (n={test.n})")
    cal = result.metrics.calibration
    if cal:
        thr, floor = cal.get("unknown_threshold"), cal.get("ece_test_floor")
        console.labelled(
            "Calibration",
            f"T={cal['temperature']:.3f}  ECE test {cal['ece_test_before']:.3f} -> {cal['ece_test_after']:.3f}"
            + ("" if floor is None else f" (a perfectly calibrated model would read ~{floor:.3f} on {test.n})")
            + f"  unknown below {'-' if thr is None else f'{thr:.3f}'}",
        )
    roles = result.metrics.images_per_role
    console.labelled(
        "Images",
        f"head learnt from {roles.get('head_fit')}, chosen on val {roles.get('val')}, "
        f"calibrated on {roles.get('calib')}, tested on {roles.get('test')}",
    )
    console.outputs("Run dir", result.run_dir)


def _other_rank(rank: int, task: str, data: Path | None, kw: dict) -> None:
    """A rank other than 0 prints nothing but an error of its own that rank 0 cannot report (e.g. it lost
    the others); errors every rank shares, and bad options (rank 0 has the same), are rank 0's to print."""
    from edgeft.train.run import train

    try:
        cfg = training_config(task, data, **kw)
    except EdgeftError as exc:
        raise typer.Exit(exc.exit_code) from None
    try:
        train(cfg)
    except EdgeftError as exc:
        if not getattr(exc, "shared", False):
            console.error(f"rank {rank}: {exc}" if not exc.message.startswith("rank ") else str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@train_app.command("fish", short_help="Train on the fish dataset (synthetic by default).")
def train_fish(
    data: Path = typer.Option(
        None, "--data", help="Fish_Dataset root (or its parent); default: embedded synthetic fish."
    ),
    species: str = OPTIONS["species"],
    init: Path = OPTIONS["init"],
    backbone: str = OPTIONS["backbone"],
    backbone_weights: Path = OPTIONS["backbone_weights"],
    epochs: int = OPTIONS["epochs"],
    finetune_epochs: int = OPTIONS["finetune_epochs"],
    finetune_blocks: int = OPTIONS["finetune_blocks"],
    lr: float = OPTIONS["lr"],
    batch_size: int = OPTIONS["batch_size"],
    hidden: str = OPTIONS["hidden"],
    dropout: float = OPTIONS["dropout"],
    patience: int = OPTIONS["patience"],
    seed: int = OPTIONS["seed"],
    out: Path = OPTIONS["out"],
    name: str = OPTIONS["name"],
    overwrite: bool = OPTIONS["overwrite"],
    resume: bool = OPTIONS["resume"],
    device: str = OPTIONS["device"],
    val_frac: float = OPTIONS["val_frac"],
    calib_frac: float = OPTIONS["calib_frac"],
    test_frac: float = OPTIONS["test_frac"],
    group_regex: str = OPTIONS["group_regex"],
    synth_per_class: int = OPTIONS["synth_per_class"],
    grouping: str = OPTIONS["grouping"],
    head: str = OPTIONS["head"],
    weight_decay: float = OPTIONS["weight_decay"],
    refit: bool = OPTIONS["refit"],
    false_reject_rate: float = OPTIONS["false_reject_rate"],
    crop: str = OPTIONS["crop"],
    resampler: str = OPTIONS["resampler"],
    augment: str = OPTIONS["augment"],
) -> None:
    """Train a fish-species classifier (Large-Scale Fish Dataset layout, or the synthetic default)."""
    run_training("fish", **locals())


def train_folder(**options: Any) -> None:
    """Train on any class-per-folder (or pre-split) image tree."""
    run_training("folder", **options)


# `train folder` takes `train fish`'s options, except that --data is required (so no synthetic default)
_FISH = inspect.signature(train_fish)
_FOLDER_DATA = _FISH.parameters["data"].replace(
    default=typer.Option(..., "--data", help="Class-per-folder or train/val/test tree.")
)
train_folder.__signature__ = _FISH.replace(  # type: ignore[attr-defined]
    parameters=[_FOLDER_DATA, *(p for n, p in _FISH.parameters.items() if n not in ("data", "synth_per_class"))]
)
train_folder.__annotations__ = {k: v for k, v in train_fish.__annotations__.items() if k != "synth_per_class"}
train_app.command("folder")(train_folder)


def eval_cmd(
    run: Path = typer.Argument(
        None,
        help="Run dir written by `edgeft train`, or a bundle (then the run it was exported from, where eval.json "
        "goes); default: the latest under runs/.",
    ),
    data: Path = typer.Option(None, "--data", help="Evaluate on this tree instead of the run's test split."),
) -> None:
    """Recompute metrics of a run's PyTorch model on its test split, or on another image tree."""
    from edgeft.train.evaluate import evaluate_run

    with console.reporting() as rep:
        result, out, run_dir = evaluate_run(run, data, rep)
    if run is None:
        console.labelled("Run", f"{run_dir} (the latest under runs/)", stderr=True)
    elif Path(run).resolve() != Path(run_dir).resolve():
        console.labelled("Run", f"{run_dir} (the run {run} was exported from)", stderr=True)
    render_eval(result)
    console.labelled("Accuracy", f"{result.accuracy:.4f}  macro-F1 {result.f1_macro:.4f}  (n={result.n})")
    console.outputs("Metrics written to", out)


EVAL_COLUMNS = (
    console.Col("class", "left"),
    console.Col("n"),
    console.Col("precision", drop=2),
    console.Col("recall"),
    console.Col("F1"),
)


def render_eval(metrics) -> None:
    """Per-class precision / recall / F1 with the image count, fitted to the terminal."""
    from rich.markup import escape

    rows = [
        [escape(name), str(int(m["support"])), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}"]
        for name, m in metrics.per_class.items()
    ]
    console.out().print(console.fitted_table(f"per-class scores on {metrics.n} images", EVAL_COLUMNS, rows))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("eval", short_help="Re-measure a run's model on its test split.")(eval_cmd)
