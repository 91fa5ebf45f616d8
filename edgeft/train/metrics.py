"""Classification metrics and plots for a run dir."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeft.core.plotting import pyplot
from edgeft.core.reports import SplitMetrics


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> SplitMetrics:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return SplitMetrics(
        n=int(len(y_true)),
        accuracy=float(accuracy_score(y_true, y_pred)) if len(y_true) else None,
        precision_macro=float(np.mean(p)),
        recall_macro=float(np.mean(r)),
        f1_macro=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        f1_weighted=float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        per_class={
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_loss"] for h in history], label="train")
    a1.plot(ep, [h["val_loss"] for h in history], label="val")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a2.plot(ep, [h["train_acc"] for h in history], label="train")
    a2.plot(ep, [h["val_acc"] for h in history], label="val")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], classes: Sequence[str], path: Path) -> None:
    plt = pyplot()
    cm_a = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 0.75 + 0.7 * len(classes)))
    ax.imshow(cm_a, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = cm_a.max() / 2 if cm_a.size else 0
    for i in range(cm_a.shape[0]):
        for j in range(cm_a.shape[1]):
            ax.text(
                j,
                i,
                str(cm_a[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm_a[i, j] > thresh else "black",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid_order(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> list[int]:
    """Up to n indices: half wrong and half right (the other kind fills up when one runs short), in index order."""
    wrong = [i for i in range(len(y_true)) if y_true[i] != y_pred[i]]
    right = [i for i in range(len(y_true)) if y_true[i] == y_pred[i]]
    k_wrong = min(len(wrong), max(n // 2, n - len(right)))
    return wrong[:k_wrong] + right[: n - k_wrong]


def plot_prediction_grid(
    paths: Sequence[Path],
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    path: Path,
    n: int = 16,
) -> None:
    """Test images titled 'pred p% / true', green when right, red when wrong: wrong and right ones side by side."""
    from PIL import Image

    plt = pyplot()
    y_pred = [int(i) for i in np.asarray(probs).argmax(1)]
    order = grid_order(y_true, y_pred, n)
    cols = 4
    rows = max(1, (len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.5))
    for ax in np.atleast_1d(axes).flatten():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).flatten(), order, strict=False):
        with Image.open(paths[i]) as im:
            im.thumbnail((256, 256))
            ax.imshow(im.convert("RGB"))
        ok = y_true[i] == y_pred[i]
        title = f"{classes[y_pred[i]]} {probs[i][y_pred[i]]:.0%}\ntrue: {classes[y_true[i]]}"
        ax.set_title(title, fontsize=7, color="green" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
