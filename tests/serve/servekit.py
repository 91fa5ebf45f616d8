"""Helpers of the serve tests: class frames, real videos written with OpenCV, and an engine that can block or fail."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
from imagegen import CLASSES, class_image
from PIL import Image


def class_frames(n: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """n RGB uint8 frames cycling through the tiny run's classes (the pattern it was trained on)."""
    rng = np.random.default_rng(seed)
    return [np.asarray(class_image(i % len(CLASSES), rng, size)) for i in range(n)]


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def write_video(path: Path, frames_rgb: list[np.ndarray], fps: float = 30.0) -> str:
    """Write frames losslessly (FFV1) when this OpenCV can, else as MJPG; returns the fourcc used."""
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


class ControlledEngine:
    """Wraps a real loaded engine; can block (until released) or raise, to make overload and crash tests exact."""

    def __init__(self, engine, transform=None) -> None:
        self.engine = engine
        self.transform = transform
        self.precision = engine.precision
        self.block = False
        self.fail = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(int(batch.shape[0]))
        if self.fail:
            raise RuntimeError("deliberate failure inside the model")
        if self.block:
            self.entered.set()
            if not self.release.wait(30.0):
                raise RuntimeError("the test never released the blocked model")
        out = self.engine.infer(batch)
        return self.transform(out) if self.transform is not None else out

    def describe(self) -> str:
        return f"controlled {self.engine.describe()}"

    def close(self) -> None:
        self.engine.close()
