"""Small procedural test images: one colour and stripe pattern per class, seeded noise, written as PNG trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Gilt-Head Bream", "Red Mullet", "Sea Bass", "Trout")
PALETTE = np.array([[230, 200, 40], [220, 40, 40], [50, 70, 220], [40, 200, 60]], np.float32)


def class_image(k: int, rng: np.random.Generator, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """An image of class k: its own colour and stripe frequency, random phase and noise."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(xx * (0.2 + 0.25 * k) + yy * 0.05 * k + rng.uniform(0, 6.28))
    base = PALETTE[k % len(PALETTE)][None, None, :] * (0.55 + 0.45 * stripes[..., None])
    img = base + rng.normal(0, 14, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_tree(root: Path, per_class: int = 32, seed: int = 0, classes=CLASSES) -> Path:
    """root/<class>/<class>_NNN.png, deterministic from the seed."""
    for k, name in enumerate(classes):
        rng = np.random.default_rng([seed, k])
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(k, rng).save(root / name / f"{name.replace(' ', '_')}_{i:03d}.png")
    return root
