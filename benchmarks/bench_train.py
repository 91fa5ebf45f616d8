"""Feature-pass throughput, and 20 head epochs from the feature cache vs running the frozen backbone every epoch.

    python benchmarks/bench_train.py [--per-class 40] [--epochs 20]

Prints img/s of the feature pass (decode -> preprocess -> embedding, ONNX Runtime and torch eager), then
wall time and test accuracy of both head-training approaches on the same splits, and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgeft.data.layouts import load_dataset
from edgeft.data.splits import assign_splits
from edgeft.data.synth import generate_dataset
from edgeft.models.backbones import create_backbone, weights_digest
from edgeft.models.classifier import Classifier, MLPHead
from edgeft.train.features import FeatureExtractor
from edgeft.train.fit import FitConfig, ImageSet, fit, seed_everything


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="edgeft-bench-"))
    root = generate_dataset(tmp / "data", per_class=args.per_class, seed=0)
    ds = load_dataset(root)
    assign = assign_splits(ds, seed=0)
    idx = {c: i for i, c in enumerate(ds.classes)}
    split = {s: [r for r in ds.records if assign[r.path] == s] for s in ("train", "val", "test")}
    paths = {s: [ds.abspath(r) for r in v] for s, v in split.items()}
    labels = {s: np.array([idx[r.label] for r in v]) for s, v in split.items()}
    shas = {s: [r.sha256 for r in v] for s, v in split.items()}
    bb = create_backbone()
    wsha = weights_digest(bb.module)
    n_all = sum(len(v) for v in paths.values())
    print(
        f"data: {n_all} images ({len(paths['train'])} train / {len(paths['val'])} val / {len(paths['test'])} test), 2 threads"
    )

    for engine in ("onnxruntime", "torch"):
        fx = FeatureExtractor(bb.module, bb.preprocess, wsha, bb.arch, engine=engine, cache_dir=tmp / f"cache-{engine}")
        t0 = time.perf_counter()
        fx.extract(paths["train"], shas["train"])
        dt = time.perf_counter() - t0
        print(f"feature pass [{fx.engine_name:11s}]: {len(paths['train']) / dt:6.1f} img/s (decode+preprocess+embed)")

    cfg = FitConfig(epochs=args.epochs, lr=3e-3, patience=args.epochs + 1)
    # cached: one feature pass, then head epochs on vectors
    seed_everything(0)
    fx = FeatureExtractor(bb.module, bb.preprocess, wsha, bb.arch, cache_dir=tmp / "cache-run")
    t0 = time.perf_counter()
    feats = {s: torch.from_numpy(fx.extract(paths[s], shas[s])) for s in ("train", "val", "test")}
    head = MLPHead(bb.feature_dim, len(ds.classes), (256,), 0.3)
    gen = torch.Generator().manual_seed(0)
    tl = DataLoader(
        TensorDataset(feats["train"], torch.from_numpy(labels["train"])), batch_size=64, shuffle=True, generator=gen
    )
    vl = DataLoader(TensorDataset(feats["val"], torch.from_numpy(labels["val"])), batch_size=512)
    fit(head, tl, vl, list(head.parameters()), cfg)
    t_cached = time.perf_counter() - t0
    with torch.inference_mode():
        acc_cached = float((head(feats["test"]).argmax(1).numpy() == labels["test"]).mean())

    # naive: the frozen backbone runs on every image, every epoch
    seed_everything(0)
    head2 = MLPHead(bb.feature_dim, len(ds.classes), (256,), 0.3)
    model = Classifier(bb.module, head2)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    tl = DataLoader(
        ImageSet(paths["train"], labels["train"].tolist(), bb.preprocess), batch_size=64, shuffle=True, generator=gen
    )
    vl = DataLoader(ImageSet(paths["val"], labels["val"].tolist(), bb.preprocess), batch_size=64)
    t0 = time.perf_counter()
    fit(model, tl, vl, list(head2.parameters()), cfg)
    t_naive = time.perf_counter() - t0
    with torch.inference_mode():
        test = DataLoader(ImageSet(paths["test"], labels["test"].tolist(), bb.preprocess), batch_size=64)
        pred = np.concatenate([model(x).argmax(1).numpy() for x, _ in test])
    acc_naive = float((pred == labels["test"]).mean())

    print(f"{args.epochs} head epochs, feature cache : {t_cached:7.1f} s  test acc {acc_cached:.4f}")
    print(f"{args.epochs} head epochs, naive backbone: {t_naive:7.1f} s  test acc {acc_naive:.4f}")
    print(f"speed-up: {t_naive / t_cached:.1f}x")


if __name__ == "__main__":
    main()
