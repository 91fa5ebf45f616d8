"""The head on cached features: candidates chosen on validation, then refitted on train + val.

Candidates are a linear (logistic) head and an MLP head, each trained on train with early stopping on
val. The one with the best val accuracy (then val loss) wins; with `refit`, a fresh head of that kind is
trained on train + val for the winner's best epoch count, so the final head learns from every labelled
image not held out for calibration or test.

With a checkpoint (edgeft.train.resume), each candidate's fit saves every epoch (`fit.head.<kind>`), a
finished candidate is kept (`head.<kind>`) and the refit saves every epoch (`fit.head.refit`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgeft.models.classifier import MLPHead
from edgeft.train.fit import FitConfig, evaluate, fit, seed_everything
from edgeft.train.resume import Checkpoint


@dataclass(frozen=True)
class HeadChoice:
    kind: str
    hidden: tuple[int, ...]
    dropout: float
    weight_decay: float

    def build(self, in_dim: int, n_classes: int) -> MLPHead:
        return MLPHead(in_dim, n_classes, hidden=self.hidden, dropout=self.dropout)


def head_candidates(head: str, hidden: tuple[int, ...], dropout: float, weight_decay: float) -> list[HeadChoice]:
    linear = HeadChoice("linear", (), min(dropout, 0.2), max(weight_decay, 1e-3))
    mlp = HeadChoice("mlp", tuple(hidden) or (256,), dropout, weight_decay)
    return {"linear": [linear], "mlp": [mlp]}.get(head, [linear, mlp])


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None) -> DataLoader:
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    if seed is None:
        return DataLoader(ds, batch_size=512)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def select_and_refit(
    choices: list[HeadChoice],
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    n_classes: int,
    base: FitConfig,
    refit: bool,
    on_epoch=None,
    extra: dict[str, np.ndarray] | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[MLPHead, HeadChoice, dict]:
    """(final head, its choice, record for metrics.json: every candidate's val figures and the refit).

    extra: more training rows per role (e.g. mirrored views of "train" and "val"), labelled like the role.
    checkpoint: where candidates and fits in progress are saved, and found again on resume.
    """

    def slot(key: str):
        return checkpoint.slot(key) if checkpoint is not None else None

    extra = extra or {}

    def rows(roles: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs = [feats[r] for r in roles] + [extra[r] for r in roles if r in extra]
        ys = [labels[r] for r in roles] + [labels[r] for r in roles if r in extra]
        return np.concatenate(xs), np.concatenate(ys)

    in_dim = feats["train"].shape[1]
    val = _loader(feats["val"], labels["val"], 512, None)
    tried, best = [], None
    for choice in choices:
        done = checkpoint.get(f"head.{choice.kind}") if checkpoint is not None else None
        if done is not None:  # finished before the training was interrupted
            row, state = done
            head = choice.build(in_dim, n_classes)
            head.load_state_dict(state)
            acc, loss = row["val_accuracy"], row["val_loss"]
        else:
            seed_everything(base.seed)
            head = choice.build(in_dim, n_classes)
            cfg = FitConfig(**{**asdict(base), "weight_decay": choice.weight_decay})
            hist = fit(
                head,
                _loader(*rows(("train",)), cfg.batch_size, cfg.seed),
                val,
                list(head.parameters()),
                cfg,
                on_epoch=on_epoch,
                resume=slot(f"fit.head.{choice.kind}"),
            )
            loss, acc, _ = evaluate(head, val, torch.nn.CrossEntropyLoss(), cfg.device)
            row = {
                **asdict(choice),
                "val_accuracy": acc,
                "val_loss": loss,
                "best_epoch": hist.best_epoch,
                "history": hist.epochs,
                "stopped_early": hist.stopped_early,
            }
            if checkpoint is not None:
                state = {k: v.cpu() for k, v in head.state_dict().items()}
                checkpoint.put(f"head.{choice.kind}", row, state, drop=[f"fit.head.{choice.kind}"])
        tried.append(row)
        if best is None or (acc, -loss) > (best[2]["val_accuracy"], -best[2]["val_loss"]):
            best = (head.cpu(), choice, row)
    head, choice, row = best
    record = {"candidates": tried, "chosen": choice.kind, "refit": None}
    if refit and len(feats["val"]):
        epochs = max(1, row["best_epoch"])
        seed_everything(base.seed)
        head = choice.build(in_dim, n_classes)
        cfg = FitConfig(**{**asdict(base), "weight_decay": choice.weight_decay, "epochs": epochs, "select_best": False})
        both_x, both_y = rows(("train", "val"))
        both = _loader(both_x, both_y, cfg.batch_size, cfg.seed)
        hist = fit(head, both, val, list(head.parameters()), cfg, resume=slot("fit.head.refit"))
        images = len(labels["train"]) + len(labels["val"])
        record["refit"] = {
            "on": "train+val",
            "images": images,
            "rows": len(both_y),
            "epochs": epochs,
            "history": hist.epochs,
        }
        head = head.cpu()
    return head.eval(), choice, record
