"""`edgeft train`: data -> splits -> frozen backbone features -> head (-> optional fine-tune) -> run dir."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader

import edgeft
from edgeft.data.layouts import Dataset, load_dataset
from edgeft.data.splits import SplitFractions, assign_splits, write_splits
from edgeft.errors import EdgeftError
from edgeft.manifest import ModelManifest, write_json_atomic
from edgeft.train.backbones import DEFAULT_BACKBONE, Backbone, create_backbone, weights_digest
from edgeft.train.features import FeatureExtractor, cache_root
from edgeft.train.fit import (
    FitConfig,
    ImageSet,
    evaluate,
    feature_loaders,
    fit,
    image_loaders,
    resolve_device,
    seed_everything,
    unfreeze_top_blocks,
)
from edgeft.train.metrics import classification_metrics, plot_confusion, plot_curves, plot_prediction_grid
from edgeft.train.model import Classifier, MLPHead, load_run, save_weights

SYNTH_PER_CLASS = 150


@dataclass
class TrainConfig:
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
    device: str = "auto"
    fractions: SplitFractions = field(default_factory=SplitFractions)
    group_regex: str | None = None
    synth_per_class: int = SYNTH_PER_CLASS
    workers: int = 2


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    synthetic: bool


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


def next_run_dir(out: Path, task: str, name: str | None) -> Path:
    """runs/<task>/<name>; without a name, exp, exp2, exp3, ... like other training tools."""
    base = out / task
    if name:
        return base / name
    i = 1
    while (base / ("exp" if i == 1 else f"exp{i}")).exists():
        i += 1
    return base / ("exp" if i == 1 else f"exp{i}")


def synthetic_fish(seed: int, per_class: int, console: Console, species: list[str] | None = None) -> Path:
    """Generate (once, cached) the embedded synthetic fish dataset in the Kaggle layout."""
    from edgeft.data.synth import generate_dataset

    target = cache_root() / "synth" / f"fish-s{seed}-n{per_class}"
    marker = target / ".complete"
    if not marker.is_file():
        console.print(f"Generating the SYNTHETIC fish dataset ({per_class} images/class, seed {seed}) in {target}")
        with _progress(console) as prog:
            task = prog.add_task("synth", total=None, info="")
            generate_dataset(
                target, per_class=per_class, seed=seed, progress=lambda d, t: prog.update(task, completed=d, total=t)
            )
        marker.write_text("ok\n")
    return target


def _labels(ds: Dataset, assignment: dict[str, str], split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    index = {c: i for i, c in enumerate(ds.classes)}
    recs = sorted((r for r in ds.records if assignment[r.path] == split), key=lambda r: (r.label, r.path))
    return [ds.abspath(r) for r in recs], np.array([index[r.label] for r in recs], np.int64), [r.sha256 for r in recs]


def _backbone(cfg: TrainConfig) -> tuple[Backbone, str | None]:
    if cfg.init is None:
        return create_backbone(cfg.backbone, cfg.backbone_weights), None
    prev, man = load_run(cfg.init)
    bb = Backbone(
        id=man.backbone["id"],
        arch=man.backbone["arch"],
        module=prev.backbone,
        feature_dim=int(man.backbone["feature_dim"]),
        preprocess=man.preprocess_spec,
        source=f"run:{Path(cfg.init).resolve()}",
        blocks=[],
        pretrained=True,
    )
    return bb, str(Path(cfg.init).resolve())


def train(cfg: TrainConfig, console: Console | None = None) -> TrainResult:
    console = console or Console()
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    device = resolve_device(cfg.device)
    synthetic = cfg.data is None
    if synthetic:
        if cfg.task != "fish":
            raise EdgeftError(
                "`edgeft train folder` needs --data DIR", fix="pass --data pointing at a class-per-folder tree"
            )
        console.print("[yellow]No --data given: training on the embedded SYNTHETIC fish dataset, not real photos.[/]")
        data_root = synthetic_fish(cfg.seed, cfg.synth_per_class, console)
    else:
        data_root = Path(cfg.data)

    with _progress(console) as prog:
        t = prog.add_task("scan", total=None, info="validate + hash")
        ds = load_dataset(
            data_root,
            species=cfg.species,
            group_regex=cfg.group_regex,
            progress=lambda d, n: prog.update(t, completed=d, total=n),
            workers=cfg.workers,
        )
    assignment = assign_splits(ds, cfg.seed, cfg.fractions)
    run_dir = next_run_dir(Path(cfg.out), cfg.task, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model.json").unlink(missing_ok=True)  # a rerun into the same dir is half-written until the end
    splits_doc = write_splits(ds, assignment, cfg.seed, run_dir / "splits.json")
    write_json_atomic(run_dir / "skipped.json", {"root": str(ds.root), "skipped": ds.skipped})
    if ds.skipped:
        console.print(f"[yellow]Skipped {len(ds.skipped)} bad file(s); see {run_dir / 'skipped.json'}[/]")
    for split in ("train", "val", "test"):
        empty = [c for c, n in splits_doc["counts"][split].items() if n == 0]
        if empty:
            raise EdgeftError(
                f"split {split!r} has no images of {empty} (too few images or near-duplicate groups)",
                path=ds.root,
                fix="add more images per class, or lower the split fractions",
            )

    bb, init_from = _backbone(cfg)
    spec = bb.preprocess
    head = MLPHead(bb.feature_dim, len(ds.classes), hidden=tuple(cfg.hidden), dropout=cfg.dropout)
    model = Classifier(bb.module, head)
    for p in model.backbone.parameters():
        p.requires_grad_(not bb.pretrained)
    data = {s: _labels(ds, assignment, s) for s in ("train", "val", "test")}
    paths = {s: data[s][0] for s in data}
    labels = {s: data[s][1] for s in data}
    fit_cfg = FitConfig(cfg.epochs, cfg.lr, 1e-4, cfg.batch_size, cfg.patience, device=device, seed=cfg.seed)
    phases: dict[str, dict] = {}

    def epoch_cb(prog: Progress, task):
        def cb(row: dict) -> None:
            prog.update(
                task,
                advance=1,
                info=f"loss {row['train_loss']:.3f} val_loss {row['val_loss']:.3f} val_acc {row['val_acc']:.3f}",
            )

        return cb

    if bb.pretrained:
        fx = FeatureExtractor(bb.module, spec, weights_digest(bb.module), bb.arch, device=device, cache_dir=None)
        feats = {}
        with _progress(console) as prog:
            for s in ("train", "val", "test"):
                t = prog.add_task(f"features {s}", total=len(paths[s]), info=fx.engine_name)
                feats[s] = fx.extract(
                    paths[s], data[s][2], progress=lambda d, n, t=t: prog.update(t, completed=d, total=n)
                )
            tl, vl = feature_loaders(feats, labels, cfg.batch_size, cfg.seed)
            t = prog.add_task("head", total=cfg.epochs, info="")
            hist = fit(head, tl, vl, list(head.parameters()), fit_cfg, on_epoch=epoch_cb(prog, t))
        phases["head"] = {
            "history": hist.epochs,
            "best_epoch": hist.best_epoch,
            "stopped_early": hist.stopped_early,
            "feature_engine": fx.engine_name,
            "feature_cache_key": fx.key,
        }
    else:
        feats = {}
        with _progress(console) as prog:
            t = prog.add_task("train (scratch)", total=cfg.epochs, info="")
            tl, vl = image_loaders(paths, {s: labels[s].tolist() for s in labels}, spec, cfg.batch_size, cfg.seed)
            hist = fit(model, tl, vl, [p for p in model.parameters()], fit_cfg, on_epoch=epoch_cb(prog, t))
        phases["scratch"] = {"history": hist.epochs, "best_epoch": hist.best_epoch, "stopped_early": hist.stopped_early}

    if cfg.finetune_epochs > 0 and bb.pretrained:
        if not bb.blocks:
            raise EdgeftError(
                "--finetune-epochs is not available with --init runs", fix="fine-tune the source run instead"
            )
        params = unfreeze_top_blocks(bb.blocks, cfg.finetune_blocks)
        ft_cfg = FitConfig(
            cfg.finetune_epochs,
            cfg.finetune_lr,
            1e-4,
            min(cfg.batch_size, 32),
            cfg.patience,
            device=device,
            seed=cfg.seed,
        )
        with _progress(console) as prog:
            t = prog.add_task(f"fine-tune top {cfg.finetune_blocks}", total=cfg.finetune_epochs, info="")
            tl, vl = image_loaders(paths, {s: labels[s].tolist() for s in labels}, spec, ft_cfg.batch_size, cfg.seed)
            hist = fit(model, tl, vl, list(head.parameters()) + params, ft_cfg, on_epoch=epoch_cb(prog, t))
        phases["finetune"] = {"history": hist.epochs, "best_epoch": hist.best_epoch, "blocks": cfg.finetune_blocks}
        for p in model.parameters():
            p.requires_grad_(False)

    model.eval().cpu()
    features_valid = bb.pretrained and "finetune" not in phases  # cached features still describe the backbone

    def logits_of(split: str) -> np.ndarray:
        if features_valid:
            ds_ = list(zip(torch.from_numpy(feats[split]), torch.from_numpy(labels[split]), strict=True))
            return evaluate(head, DataLoader(ds_, batch_size=512), torch.nn.CrossEntropyLoss(), "cpu")[2]
        loader = DataLoader(ImageSet(paths[split], labels[split].tolist(), spec), batch_size=32)
        return evaluate(model, loader, torch.nn.CrossEntropyLoss(), "cpu")[2]

    y_pred = logits_of("test").argmax(1)
    metrics = {
        "test": classification_metrics(labels["test"], y_pred, ds.classes),
        "val": classification_metrics(labels["val"], logits_of("val").argmax(1), ds.classes),
    }
    metrics["phases"] = phases
    metrics["synthetic_data"] = synthetic

    sha = save_weights(model, run_dir)
    history = [r for ph in phases.values() for r in ph["history"]]
    for i, r in enumerate(history, 1):
        r["step"] = i
    plot_curves([{**r, "epoch": r["step"]} for r in history], run_dir / "curves.png", title=run_dir.name)
    plot_confusion(metrics["test"]["confusion_matrix"], ds.classes, run_dir / "confusion_matrix.png")
    plot_prediction_grid(
        paths["test"], labels["test"].tolist(), y_pred.tolist(), ds.classes, run_dir / "predictions.png"
    )
    write_json_atomic(run_dir / "metrics.json", metrics)
    manifest = ModelManifest(
        task=cfg.task,
        name=run_dir.name,
        backbone={
            "id": bb.id,
            "arch": bb.arch,
            "feature_dim": bb.feature_dim,
            "source": bb.source,
            "pretrained": bb.pretrained,
            "weights_sha256": weights_digest(model.backbone),
            "frozen": "finetune" not in phases and bb.pretrained,
        },
        classes=list(ds.classes),
        preprocess=spec.to_dict(),
        head={"hidden": list(cfg.hidden), "dropout": cfg.dropout},
        weights={"file": "model.safetensors", "sha256": sha},
        seed=cfg.seed,
        finetune={"epochs": cfg.finetune_epochs, "blocks": cfg.finetune_blocks} if "finetune" in phases else {},
        init_from=init_from,
        versions=_versions(),
        data={"root": str(ds.root), "layout": ds.layout, "synthetic": synthetic, "skipped": len(ds.skipped)},
    )
    manifest.save(run_dir)  # written last: its presence marks a complete run dir
    return TrainResult(run_dir, metrics, synthetic)


def _versions() -> dict:
    import timm

    return {
        "edgeft": edgeft.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
