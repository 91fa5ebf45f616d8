"""Fit loops: the head on cached features (phase 1), and end to end on images (phase 2 / from scratch).

Flat, readable functions in the torchvision-references style: train_one_epoch, evaluate, fit.
AdamW, cosine schedule, early stopping on val loss with the best weights restored. `fit(..., resume=slot)`
saves its whole state after every epoch (weights, best weights, optimizer, schedule, shuffling generator,
counters) and continues from the last saved epoch (edgeft.train.resume). A model wrapped in
DistributedDataParallel (edgeft.train.distributed) trains on each rank's shard; the epoch's train figures
are summed over the ranks and rank 0's val loss decides for all.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from edgeft.core.errors import EdgeftError
from edgeft.core.preprocess import PreprocessSpec, load_image, preprocess


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeftError(f"--device {device} asked, but CUDA is not available", fix="use --device cpu or auto")
    return device


@dataclass
class FitConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    patience: int = 6
    label_smoothing: float = 0.05
    device: str = "cpu"
    seed: int = 0
    select_best: bool = True  # False: keep the last epoch's weights (a refit for a fixed epoch count)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


class Resumable(Protocol):
    """Where a fit keeps its state between epochs (edgeft.train.resume.Slot)."""

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None: ...

    def due(self) -> bool: ...

    def save(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None: ...


class ImageSet(Dataset):
    """Images through the shared preprocessing; train mode adds seeded horizontal flips."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], spec: PreprocessSpec, augment: bool = False):
        self.paths, self.labels, self.spec, self.augment = list(paths), list(labels), spec, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x = preprocess(load_image(self.paths[i]), self.spec)
        if self.augment and torch.rand(()) < 0.5:
            x = np.ascontiguousarray(x[:, :, ::-1])
        return torch.from_numpy(x), self.labels[i]


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, device, scaler=None) -> tuple[float, float]:
    model.train()
    _freeze_bn_of_frozen(model)
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", enabled=scaler is not None):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    if isinstance(model, DistributedDataParallel):  # the epoch's figures over every rank's shard
        sums = torch.tensor([loss_sum, correct, total], dtype=torch.float64)
        tdist.all_reduce(sums)
        loss_sum, correct, total = sums[0].item(), sums[1].item(), sums[2].item()
    return loss_sum / max(1, total), correct / max(1, total)


@torch.inference_mode()
def evaluate(model, loader, loss_fn, device) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, logits) over a loader, in eval mode."""
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        outs.append(model(x.to(device)).float().cpu())
        ys.append(y)
    if not outs:
        return float("nan"), float("nan"), np.zeros((0, 0), np.float32)
    logits, y = torch.cat(outs), torch.cat(ys)
    return loss_fn(logits, y).item(), (logits.argmax(1) == y).float().mean().item(), logits.numpy()


def _freeze_bn_of_frozen(model: nn.Module) -> None:
    """BatchNorm layers whose weights are frozen keep their running statistics (eval mode)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    params: list[nn.Parameter],
    cfg: FitConfig,
    on_epoch: Callable[[dict], None] | None = None,
    resume: Resumable | None = None,
) -> History:
    """Train `params` of `model`; keep the weights of the epoch with the lowest val loss (or the last).

    With `resume`, the state saved after the last saved epoch is restored first, and the state is saved
    after the epochs `resume.due()` picks: a killed fit resumed this way ends with the weights of an
    uninterrupted one.
    """
    device = cfg.device
    model.to(device)
    core = model.module if isinstance(model, DistributedDataParallel) else model  # the weights to keep
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * len(train_loader))
    warmup = 0.1 if steps != 10 else 0.2  # OneCycleLR divides by zero when its warm-up is exactly one step
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=warmup)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_loss = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda") if device.startswith("cuda") else None
    loop = _Loop(core, optimizer, scheduler, scaler, getattr(train_loader, "generator", None))
    saved = resume.load() if resume is not None else None
    if saved is not None:
        loop.restore(*saved)
    history = loop.history
    for epoch in range(loop.epoch + 1, cfg.epochs + 1):
        if history.stopped_early:
            break
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        tr_loss, tr_acc = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, device, scaler)
        va_loss, va_acc, _ = evaluate(core, val_loader, eval_loss, device)
        if model is not core:  # BatchNorm statistics differ per rank: rank 0's val loss decides for all
            va_loss, va_acc = _from_rank0(va_loss, va_acc)
        row = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss, "val_acc": va_acc}
        history.epochs.append(row)
        loop.epoch = epoch
        if on_epoch:
            on_epoch(row)
        if not cfg.select_best:
            history.best_epoch = epoch
        elif va_loss < loop.best_loss - 1e-4:
            loop.best_loss, loop.bad, history.best_epoch = va_loss, 0, epoch
            loop.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in core.state_dict().items()})
        else:
            loop.bad += 1
            history.stopped_early = loop.bad >= cfg.patience
        if resume is not None and resume.due():
            resume.save(*loop.state())
    if loop.best_state is not None:
        core.load_state_dict(loop.best_state)
    model.eval()
    return history


def _from_rank0(*values: float) -> tuple[float, ...]:
    t = torch.tensor(values, dtype=torch.float64)
    tdist.broadcast(t, src=0)
    return tuple(t.tolist())


class _Loop:
    """Everything `fit` carries from one epoch to the next, as (JSON, tensors) for a checkpoint."""

    def __init__(self, model, optimizer, scheduler, scaler, generator: torch.Generator | None):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.generator = generator
        self.history = History()
        self.epoch, self.best_loss, self.bad = 0, float("inf"), 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        opt = self.optimizer.state_dict()
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors |= {f"best.{k}": v for k, v in (self.best_state or {}).items()}
        opt_json: dict[str, dict[str, Any]] = {}
        for pid, st in opt["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"opt.{pid}.{k}"] = v
                else:
                    opt_json.setdefault(str(pid), {})[k] = v
        if self.generator is not None:
            tensors["generator"] = self.generator.get_state()
        meta = {
            "epoch": self.epoch,
            "history": self.history.epochs,
            "best_epoch": self.history.best_epoch,
            "stopped_early": self.history.stopped_early,
            "best_loss": self.best_loss,
            "bad": self.bad,
            "has_best": self.best_state is not None,
            "optimizer": {"param_groups": opt["param_groups"], "state": opt_json},
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        return meta, tensors

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        def under(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.model.load_state_dict(under("model."))
        self.best_state = under("best.") if meta["has_best"] else None
        state: dict[int, dict[str, Any]] = {}
        for k, v in under("opt.").items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        for pid, extra in meta["optimizer"]["state"].items():
            state.setdefault(int(pid), {}).update(extra)
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["optimizer"]["param_groups"]]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.scheduler.load_state_dict(meta["scheduler"])
        if self.scaler is not None and meta["scaler"]:
            self.scaler.load_state_dict(meta["scaler"])
        if self.generator is not None and "generator" in tensors:
            self.generator.set_state(tensors["generator"])
        self.epoch, self.best_loss, self.bad = meta["epoch"], meta["best_loss"], meta["bad"]
        self.history = History(list(meta["history"]), meta["best_epoch"], meta["stopped_early"])


def image_loaders(
    paths: dict[str, list[Path]],
    labels: dict[str, list[int]],
    spec: PreprocessSpec,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled, augmented train batches and val batches. With world > 1, each rank gets its shard of train
    (DistributedSampler, reshuffled each epoch from the seed) in batches of batch_size / world, so the
    global batch stays batch_size; every rank gets all of val."""
    tr = ImageSet(paths["train"], labels["train"], spec, augment=True)
    va = ImageSet(paths["val"], labels["val"], spec)
    val = DataLoader(va, batch_size=batch_size, num_workers=0)
    if world > 1:
        sampler = DistributedSampler(tr, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        return DataLoader(tr, batch_size=max(1, -(-batch_size // world)), sampler=sampler, num_workers=0), val
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(tr, batch_size=batch_size, shuffle=True, generator=gen, num_workers=0), val


def unfreeze_top_blocks(blocks: list[nn.Module], k: int) -> list[nn.Parameter]:
    """Unfreeze the last k backbone blocks; returns their parameters."""
    params: list[nn.Parameter] = []
    for b in blocks[len(blocks) - k :] if k > 0 else []:
        for p in b.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params
