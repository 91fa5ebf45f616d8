"""`edgeft eval`: metrics of a run's torch model on its test split or on another tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgeft.data.splits import read_splits, split_items
from edgeft.errors import EdgeftError
from edgeft.manifest import write_json_atomic
from edgeft.train.fit import ImageSet, evaluate
from edgeft.train.metrics import classification_metrics
from edgeft.train.model import load_run


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> tuple[dict, Path]:
    run_dir = Path(run_dir)
    model, manifest = load_run(run_dir)
    index = {c: i for i, c in enumerate(manifest.classes)}
    if data is None:
        items = split_items(read_splits(run_dir), "test")
        out = run_dir / "eval.json"
    else:
        from edgeft.data.layouts import load_dataset

        ds = load_dataset(data)
        unknown = [c for c in ds.classes if c not in index]
        if unknown:
            raise EdgeftError(
                f"classes {unknown} are not in the run's classes {manifest.classes}",
                path=data,
                fix="evaluate on a tree whose class folders are a subset of the run's classes",
            )
        items = [(ds.abspath(r), r.label) for r in ds.records]
        out = run_dir / f"eval-{Path(data).name}.json"
    if not items:
        raise EdgeftError("no images to evaluate", path=data or run_dir / "splits.json", fix="check the data")
    missing = [str(p) for p, _ in items if not p.is_file()]
    if missing:
        raise EdgeftError(
            f"{len(missing)} image(s) of the split are missing, e.g. {missing[0]}",
            path=run_dir / "splits.json",
            fix="restore the dataset at the path recorded in splits.json, or pass --data",
        )
    labels = np.array([index[lbl] for _, lbl in items])
    loader = DataLoader(ImageSet([p for p, _ in items], labels.tolist(), manifest.preprocess_spec), batch_size=32)
    _, _, logits = evaluate(model, loader, torch.nn.CrossEntropyLoss(), "cpu")
    result = classification_metrics(labels, logits.argmax(1), manifest.classes)
    write_json_atomic(out, result)
    return result, out
