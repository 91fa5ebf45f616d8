"""A tiny, deterministic run dir for the export tests: swap `make_tiny_run` for conftest's `tiny_run` later.

Images are procedural (one colour/pattern family per class, seeded jitter), the backbone is the real frozen
EfficientNet-Lite0 and the head is fitted on its features in about a second, so INT8 has real work to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edgeft.manifest import ModelManifest, sha256_file, write_json_atomic

CLASSES = ("Black_Sea_Sprat", "Gilt_Head_Bream", "Red_Mullet", "Trout")
SPLIT_SIZES = {"train": 6, "val": 4, "calib": 4, "test": 6}
IMAGE_SIZE = (160, 120)


def _draw(label: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `label`: a class-specific colour and pattern with random phase, tint and noise."""
    w, h = IMAGE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.10, 0.16)
    if label == 0:
        pattern = np.sin(yy * freq + phase)
    elif label == 1:
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        pattern = np.sin(np.hypot(xx - cx, yy - cy) * freq + phase)
    elif label == 2:
        pattern = np.sin(xx * freq + phase)
    else:
        pattern = np.sign(np.sin(xx * freq + phase) * np.sin(yy * freq + phase))
    base = np.array([[220, 60, 40], [40, 170, 70], [50, 80, 220], [230, 200, 40]], np.float32)[label]
    tint = base + rng.normal(0, 15, 3)
    img = 128 + (tint - 128)[None, None, :] * (0.6 + 0.4 * pattern[..., None])
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_images(root: Path, seed: int = 0) -> list[dict]:
    """PNG images under root/<class>/, one splits.json item per image."""
    items = []
    for ci, cls in enumerate(CLASSES):
        rng = np.random.default_rng([seed, ci])
        (root / cls).mkdir(parents=True, exist_ok=True)
        k = 0
        for split, n in SPLIT_SIZES.items():
            for _ in range(n):
                rel = f"{cls}/{cls}_{k:03d}.png"
                _draw(ci, rng).save(root / rel)
                items.append(
                    {
                        "path": rel,
                        "label": cls,
                        "split": split,
                        "sha256": sha256_file(root / rel),
                        "group": f"{cls}-{k}",
                    }
                )
                k += 1
    return items


def _fit_head(model, feats: np.ndarray, labels: np.ndarray, seed: int) -> None:
    """Full-batch AdamW on cached features: a linear-probe-sized fit that takes well under a second."""
    import torch

    torch.manual_seed(seed)
    head = model.head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = torch.from_numpy(feats), torch.from_numpy(labels)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
    head.eval()


def make_tiny_run(run_dir: Path, data_dir: Path, seed: int = 0, hidden: tuple[int, ...] = (64,)) -> Path:
    """Write model.json, model.safetensors, splits.json and metrics.json for a 4-class toy fish run."""
    import torch

    from edgeft.runtime.preprocess import preprocess_path
    from edgeft.train.backbones import create_backbone, weights_digest
    from edgeft.train.model import Classifier, MLPHead, save_weights

    items = write_images(data_dir, seed)
    torch.manual_seed(seed)
    bb = create_backbone("efficientnet_lite0")
    spec = bb.preprocess
    model = Classifier(bb.module, MLPHead(bb.feature_dim, len(CLASSES), hidden=hidden, dropout=0.2)).eval()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    train = [it for it in items if it["split"] == "train"]
    batch = np.stack([preprocess_path(data_dir / it["path"], spec) for it in train])
    with torch.inference_mode():
        feats = model.backbone(torch.from_numpy(batch)).numpy()
    labels = np.array([CLASSES.index(it["label"]) for it in train], np.int64)
    _fit_head(model, feats, labels, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model, run_dir)
    ModelManifest(
        task="classification",
        name="tinyfish",
        backbone={
            "id": bb.id,
            "arch": bb.arch,
            "feature_dim": bb.feature_dim,
            "weights_sha256": weights_digest(bb.module),
            "source": bb.source,
        },
        classes=list(CLASSES),
        preprocess=spec.to_dict(),
        head={"hidden": list(hidden), "dropout": 0.2},
        weights={"file": "model.safetensors", "sha256": sha},
        seed=seed,
    ).save(run_dir)
    write_json_atomic(
        run_dir / "splits.json",
        {"seed": seed, "root": str(data_dir.resolve()), "classes": list(CLASSES), "items": items},
    )
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"accuracy": None}}))
    return run_dir
