"""Every training option, defined once (`TrainConfig`: the CLI builds it, the run dir records it), what a
training returns, and where its run dir goes."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeft.core.errors import EdgeftError
from edgeft.core.locate import is_run_dir
from edgeft.core.preprocess import CROPS, RESAMPLERS
from edgeft.core.reports import MetricsDoc
from edgeft.data.splits import SplitFractions
from edgeft.data.synth import DEFAULT_PER_CLASS
from edgeft.models.backbones import DEFAULT_BACKBONE
from edgeft.train.resume import has_checkpoint


@dataclass
class TrainConfig:
    """Every training option, defined once: the CLI builds it, the run dir records it."""

    task: str = "fish"
    data: Path | None = None
    species: list[str] | None = None
    init: Path | None = None
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: Path | None = None
    epochs: int = 40
    finetune_epochs: int = 0
    finetune_blocks: int = 2
    lr: float = 3e-3
    finetune_lr: float = 1e-4
    batch_size: int = 64
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.3
    patience: int = 8
    seed: int = 0
    out: Path = Path("runs")
    name: str | None = None
    overwrite: bool = False
    resume: bool = False
    device: str = "auto"
    fractions: SplitFractions = field(default_factory=SplitFractions)
    group_regex: str | None = None
    grouping: str = "auto"
    head: str = "auto"
    weight_decay: float = 1e-4
    refit: bool = True
    false_reject_rate: float = 0.05
    crop: str = "auto"
    resampler: str = "auto"
    augment: str = "none"
    synth_per_class: int = DEFAULT_PER_CLASS
    workers: int = 2

    def __post_init__(self) -> None:
        """Refuse values no training can use, in the words of the command line (the library checks, not only
        the CLI)."""
        choices = {
            "head": ("auto", "linear", "mlp"),
            "crop": ("auto", *CROPS),
            "resampler": ("auto", *RESAMPLERS),
            "augment": ("hflip", "none"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                flag = f"--{name}"
                raise EdgeftError(
                    f"{flag} {value!r} is not one of {', '.join(allowed)}", fix=f"use {flag} {allowed[0]}"
                )
        if self.epochs < 1 or self.finetune_epochs < 0:
            raise EdgeftError("--epochs must be >= 1 and --finetune-epochs >= 0", fix="pass positive epoch counts")
        if not 0.0 <= self.false_reject_rate < 1.0:
            raise EdgeftError("--false-reject-rate must be in [0, 1)", fix="e.g. --false-reject-rate 0.05")
        ranges = [
            ("--batch-size", self.batch_size >= 1, "at least 1", "64"),
            ("--lr", self.lr > 0, "above 0", "3e-3"),
            ("finetune_lr", self.finetune_lr > 0, "above 0", "1e-4"),  # a library setting (no flag)
            ("--dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)", "0.3"),
            ("--weight-decay", self.weight_decay >= 0, "0 or more", "1e-4"),
            ("--patience", self.patience >= 0, "0 or more", "8"),
            ("--hidden", all(w >= 1 for w in self.hidden), "widths of at least 1", "256"),
            (
                "--device",
                re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
                "auto, cpu, cuda[:N] or mps",
                "auto",
            ),
        ]
        for flag, ok, allowed, example in ranges:
            if not ok:
                raise EdgeftError(f"{flag} must be {allowed}", fix=f"e.g. {flag} {example}")
        if self.name is not None and (not self.name or self.name != Path(self.name).name or self.name[0] == "."):
            raise EdgeftError(
                f"--name {self.name!r} is not a run name: it must be one folder name, not a path",
                fix="pick a plain name such as exp-trout (the run goes to OUT/TASK/NAME)",
            )

    def record(self) -> dict:
        """JSON-ready hyper-parameters for model.json and args.json."""
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass
class TrainResult:
    """metrics is None on the ranks other than 0 of a multi-process training (rank 0 writes the run)."""

    run_dir: Path
    metrics: MetricsDoc | None
    synthetic: bool


def next_run_dir(out: Path, task: str, name: str | None, overwrite: bool, resume: bool = False) -> Path:
    """runs/<task>/<name>; without a name, exp, exp2, exp3, ... like other training tools (a name whose
    interrupted training left a checkpoint counts as taken)."""
    base = out / task
    for folder in (out, base):
        if folder.exists() and not folder.is_dir():
            raise EdgeftError("the runs folder is a file", path=folder, fix="pass a folder as --out")
    if resume and not name:
        raise EdgeftError(
            "--resume needs the --name of the interrupted run", fix="pass --name NAME with the interrupted run's name"
        )
    if name:
        target = base / name
        if target.exists() and not overwrite:
            raise EdgeftError(
                "a run with this name already exists; it is left untouched",
                path=target,
                fix="pick another --name, or pass --overwrite to replace it once the new run is complete",
            )
        if (target.exists() or target.is_symlink()) and not (target.is_dir() and is_run_dir(target)):
            raise EdgeftError(
                "this name is taken by something that is not an edgeft run; --overwrite replaces runs only",
                path=target,
                fix="pick another --name, or move it away yourself",
            )
        return target
    i = 1
    while (base / (n := "exp" if i == 1 else f"exp{i}")).exists() or has_checkpoint(base / n):
        i += 1
    return base / ("exp" if i == 1 else f"exp{i}")
