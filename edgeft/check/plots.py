"""Pictures of the checks: parity's flipped images and flip matrix, the accuracy-latency chart of the artifacts.

matplotlib is optional on an edge device: without it these return None and the reports are unchanged.
Images are read with Pillow only for display (thumbnails); nothing here changes a result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgeft.core.plotting import pyplot
from edgeft.core.reports import BackendResult, BenchReport, ExportReport

MAX_FLIPS_SHOWN = 12


def _thumbnail(source: str) -> Any | None:
    from PIL import Image

    try:
        with Image.open(source) as im:
            im.thumbnail((192, 192))
            return im.convert("RGB")
    except (OSError, ValueError):
        return None


def plot_flips(backends: dict[str, BackendResult], path: Path) -> Path | None:
    """One row per backend with flips: its flip matrix (reference -> candidate counts), then the flipped images
    titled with both labels and probabilities. None when nothing flipped or matplotlib is missing."""
    rows = [(name, b.comparison) for name, b in backends.items() if b.comparison is not None and b.comparison.flipped]
    plt = pyplot(optional=True) if rows else None
    if plt is None:
        return None
    cols = 1 + min(MAX_FLIPS_SHOWN, max(len(c.flipped) for _, c in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.4 * cols, 3.0 * len(rows)), squeeze=False)
    for ax in axes.flatten():
        ax.axis("off")
    for r, (name, c) in enumerate(rows):
        _flip_matrix(axes[r][0], c.flip_matrix, name)
        for ax, flip in zip(axes[r][1:], c.flipped[:MAX_FLIPS_SHOWN], strict=False):
            img = _thumbnail(flip.source)
            if img is not None:
                ax.imshow(img)
            ax.set_title(
                f"ref {flip.reference} {flip.reference_prob:.0%}\n→ {flip.candidate} {flip.candidate_prob:.0%}",
                fontsize=7,
                color="darkred",
            )
            ax.text(0.5, -0.08, Path(flip.source).name, transform=ax.transAxes, ha="center", va="top", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _flip_matrix(ax: Any, matrix: dict[str, dict[str, int]], title: str) -> None:
    refs = sorted(matrix)
    cands = sorted({c for row in matrix.values() for c in row})
    counts = [[matrix[r].get(c, 0) for c in cands] for r in refs]
    ax.axis("on")
    ax.imshow(counts, cmap="Reds")
    ax.set_xticks(range(len(cands)), cands, rotation=45, ha="right", fontsize=6)
    ax.set_yticks(range(len(refs)), refs, fontsize=6)
    top = max((v for row in counts for v in row), default=0)
    for i, row in enumerate(counts):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    ax.set_title(f"{title}\nreference → candidate", fontsize=7)


def plot_accuracy_latency(bench: BenchReport, export: ExportReport | None, path: Path) -> Path | None:
    """Accuracy (export report; else the gate's agreement) against engine p50 latency per artifact, one panel per
    batch size: the best artifact sits top-left. None without matplotlib."""
    plt = pyplot(optional=True)
    if plt is None or not bench.results:
        return None
    accuracy = {r.artifact: r.accuracy for r in export.rows} if export is not None else {}
    batches = sorted({r.batch for r in bench.results})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.0 * len(batches), 4.0), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        for r in (r for r in bench.results if r.batch == batch):
            y = accuracy.get(r.artifact)
            label = "accuracy %"
            if y is None and r.gate is not None and r.gate.agreement is not None:
                y, label = r.gate.agreement, "agreement with the reference %"
            if y is None or math.isnan(y):
                continue
            failed = r.gate is not None and not r.gate.passed
            ax.scatter(r.engine.p50_ms, 100 * y, marker="x" if failed else "o", color="red" if failed else "tab:blue")
            point = (r.engine.p50_ms, 100 * y)
            ax.annotate(f"{r.backend}/{r.artifact}", point, fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"engine p50 latency per batch of {batch} (ms)")
        ax.set_ylabel(label)
        ax.set_title(f"batch {batch} (x: failed its gate)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
