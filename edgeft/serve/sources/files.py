"""Ordered sources (a video file, an image folder, a glob): every frame, in order, through a bounded prefetch queue.

The reader thread waits for the consumer (it never drops a frame) and the source ends cleanly at the end of
its input. Unreadable image files become error frames, so they show up as error lines, not crashes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import queue
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core.errors import EdgeftError, ImageDecodeError
from edgeft.core.preprocess import load_image
from edgeft.serve.sources.base import CaptureFactory, Frame, FrameSource, default_open_capture

log = logging.getLogger("edgeft.serve")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")

_END = object()


class OrderedSource(FrameSource):
    """Every frame in order through a bounded prefetch queue: the reader waits for the consumer, nothing is dropped."""

    live = False
    kind = "ordered"

    def __init__(self, source_id: str, prefetch: int = 16) -> None:
        super().__init__(source_id)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._done = False

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._frames():
                self.stats.frames_read += 1
                if not self._put(frame):
                    return
        finally:
            self._put(_END)

    def next_frames(self, max_n: int, timeout: float) -> list[Frame]:
        """Block for the first frame (up to timeout), then fill up to max_n as long as frames keep coming."""
        out: list[Frame] = []
        if self._done:
            self._raise_if_failed()
            return out
        deadline = time.monotonic() + timeout
        while len(out) < max_n:
            wait = deadline - time.monotonic() if not out else 1.0
            if wait <= 0:
                break
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                break
            if item is _END:
                self._done = True
                break
            item.t_ready = time.perf_counter()
            out.append(item)
        self.stats.delivered += len(out)
        if not out and self._done:
            self._raise_if_failed()
        return out

    @property
    def finished(self) -> bool:
        return self._done and self._error is None

    @property
    def depth(self) -> int:
        return self._queue.qsize()


class VideoFileSource(OrderedSource):
    """A video file read frame by frame, in order; the end of the file ends the source."""

    kind = "video"

    def __init__(self, path: str | Path, *, open_capture: CaptureFactory | None = None, prefetch: int = 16) -> None:
        super().__init__(Path(path).name, prefetch)
        self.path = Path(path)
        self.open_capture = open_capture or default_open_capture
        cap = self.open_capture(str(self.path))
        if cap is None or not cap.isOpened():
            raise EdgeftError(
                "OpenCV cannot open this file as a video",
                path=self.path,
                fix="check it plays (e.g. with ffplay), re-encode it (ffmpeg -i in.mp4 -c:v mjpeg out.avi), "
                "or pass an image folder",
            )
        self._cap = cap
        fps = float(cap.get(5) or 0.0)  # cv2.CAP_PROP_FPS
        self.fps = fps if 0.0 < fps < 1000.0 else None
        self.frame_count = int(cap.get(7) or 0)  # cv2.CAP_PROP_FRAME_COUNT

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._cap.release()

    def _frames(self) -> Iterator[Frame]:
        import cv2

        index = 0
        try:
            while not self._stop.is_set():
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                yield Frame(index, rgb, time.time(), 0.0, self.source_id)
                index += 1
        finally:
            self._cap.release()
        if not self._stop.is_set() and self.frame_count > 0 and index < self.frame_count - 1:
            log.warning(
                "%s: video ended after %d of %d frames (truncated or corrupt file?)",
                self.path,
                index,
                self.frame_count,
            )


class ImageListSource(OrderedSource):
    """Image files (a directory, a glob or one file), processed once in order; unreadable files become error frames."""

    kind = "images"

    def __init__(self, files: Sequence[Path], source_id: str, root: Path | None = None, prefetch: int = 16) -> None:
        super().__init__(source_id, prefetch)
        self.files = list(files)
        self.root = root

    def _name(self, f: Path) -> str:
        if self.root is not None:
            with contextlib.suppress(ValueError):
                return f.relative_to(self.root).as_posix()
        return f.as_posix()

    def _frames(self) -> Iterator[Frame]:
        for index, f in enumerate(self.files):
            if self._stop.is_set():
                return
            name = self._name(f)
            try:
                rgb = np.asarray(load_image(f, name=name))
                yield Frame(index, rgb, time.time(), 0.0, self.source_id, name=name)
            except ImageDecodeError as exc:
                yield Frame(
                    index, None, time.time(), 0.0, self.source_id, name=name, error=exc.message, reason=exc.reason
                )


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under root exactly once: directory symlinks are followed, but never into a directory already
    visited (no symlink loop, no tree listed twice), and two links to one file yield it once."""
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def key(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:  # a dangling link or a vanished entry
            return None
        return st.st_dev, st.st_ino

    top = key(str(root))
    if top is None:
        return
    seen_dirs.add(top)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            k = key(os.path.join(dirpath, d))
            if k is not None and k not in seen_dirs:
                seen_dirs.add(k)
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            path = os.path.join(dirpath, f)
            k = key(path)
            if k is not None and k not in seen_files and os.path.isfile(path):
                seen_files.add(k)
                yield Path(path)


def list_images(directory: Path) -> list[Path]:
    """Image files under a directory (recursively, each once), in sorted path order so runs are reproducible.
    Other files (not hidden) are skipped with one warning that counts them."""
    images, others = [], []
    for p in walk_files(directory):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        elif not p.name.startswith("."):
            others.append(p)
    if others:
        names = sorted(p.relative_to(directory).as_posix() for p in others)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        log.warning("%s: skipped %d file(s) that are not images by their extension: %s", directory, len(names), shown)
    return sorted(images, key=lambda p: p.relative_to(directory).as_posix())


def glob_files(pattern: str) -> list[Path]:
    """Files matching a glob, each once and in sorted order; `**` walks with `walk_files`, so a directory symlink
    loop neither hangs the walk nor repeats files."""
    parts = Path(pattern).expanduser().parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    expanded = str(Path(*parts))
    if "**" not in parts[fixed:]:
        found = [Path(p) for p in glob.glob(expanded) if os.path.isfile(p)]
    else:
        flat = expanded.replace(f"**{os.sep}", "")
        found = [
            p for p in walk_files(base) if fnmatch.fnmatchcase(str(p), expanded) or fnmatch.fnmatchcase(str(p), flat)
        ]
    unique: dict[tuple[int, int], Path] = {}
    for p in sorted(found):
        st = p.stat()
        unique.setdefault((st.st_dev, st.st_ino), p)
    return sorted(unique.values())
