"""Shared helpers for the serve tests: synthetic frames and videos, controllable models.

Not a test module (it holds no tests); named test_serve_* so the serve tests own it. The bundle itself is
tests/runtime_fixtures.py's `tiny_bundle` (a trained 9-class CNN with ONNX/OpenVINO FP32/FP16/INT8 artifacts).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def synthetic_frames(n: int, size: tuple[int, int] = (64, 48), seed: int = 0) -> list[np.ndarray]:
    """n RGB uint8 frames cycling through the tiny bundle's classes (runtime_fixtures.class_image)."""
    from runtime_fixtures import CLASSES, class_image

    rng = np.random.default_rng(seed)
    return [np.asarray(class_image(i % len(CLASSES), rng, size)) for i in range(n)]


def frame_label(i: int) -> str:
    """The class synthetic_frames drew for frame i."""
    from runtime_fixtures import CLASSES

    return CLASSES[i % len(CLASSES)]


def write_video(path: Path, frames_rgb: list[np.ndarray], fps: float = 30.0) -> str:
    """Write frames with a lossless codec when this OpenCV has one (FFV1), else MJPG; returns the fourcc used."""
    import cv2

    h, w = frames_rgb[0].shape[:2]
    for fourcc in ("FFV1", "MJPG"):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        if writer.isOpened():
            for f in frames_rgb:
                writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            writer.release()
            return fourcc
    raise RuntimeError("this OpenCV can write neither FFV1 nor MJPG .avi")


def decode_video(path: Path) -> list[np.ndarray]:
    """Every frame of a video as RGB, the way the serve loop sees it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


class ControlledInfer:
    """Wraps a real infer function; can block (on an Event) or raise, to make overload and crash tests deterministic."""

    def __init__(self, infer) -> None:
        self.infer = infer
        self.block = False
        self.fail = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(int(batch.shape[0]))
        if self.fail:
            raise RuntimeError("deliberate failure inside the model")
        if self.block:
            self.entered.set()
            if not self.release.wait(30.0):
                raise RuntimeError("test never released the blocked model")
        return self.infer(batch)
