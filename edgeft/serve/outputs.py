"""Where stream predictions go: JSONL lines, an annotated video or image folder, and rolling statistics."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.files import clean_stale_partials, partial_name
from edgeft.serve.schema import FrameRecord
from edgeft.serve.sources import Frame


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LatencyWindow:
    """The last N latencies (ms), for p50/p99 that follow the current behaviour rather than all-time history."""

    def __init__(self, size: int = 2000) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, ms: float) -> None:
        self.values.append(ms)
        self.count += 1

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(np.asarray(self.values), q)) if self.values else None


class RateMeter:
    """Events per second since the previous call: a stalled stream or idle server shows 0, not an old average."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self._n = 0

    def update(self, total: int) -> float:
        now = time.perf_counter()
        rate = (total - self._n) / (now - self._t) if now > self._t else 0.0
        self._t, self._n = now, total
        return rate


JSONL_SUFFIXES = (".jsonl", ".ndjson")


class JsonlSink:
    """One JSON object per line, to a file or stdout; flushed per batch so tail -f and pipes see results live."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path not in (None, "-") else None
        self.lines = 0
        if self.path is None:
            self._f: IO[str] = sys.stdout
            return
        replaces_a_file = self.path.is_file() and self.path.suffix.lower() not in JSONL_SUFFIXES
        if self.path.is_dir() or replaces_a_file:  # a device or pipe (/dev/stdout, a FIFO) is written as asked
            raise EdgeftError(
                "--jsonl would overwrite a file that is not an earlier JSONL output",
                path=self.path,
                fix="pick a new file name ending in .jsonl (an existing .jsonl file is replaced)",
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise EdgeftError(
                f"cannot write the JSONL output ({exc.strerror})", path=self.path, fix="pick a writable --jsonl path"
            ) from None

    def write(self, lines: list[str]) -> None:
        """Write JSON lines (each without its newline) and flush."""
        try:
            for line in lines:
                self._f.write(line + "\n")
            self._f.flush()
        except BrokenPipeError:
            if self.path is None:  # `| head`: point stdout at /dev/null so the exit flush stays quiet
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise
        self.lines += len(lines)

    def describe(self) -> str:
        return "stdout" if self.path is None else str(self.path)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._f.flush()
        if self.path is not None:
            self._f.close()


class NullSink(JsonlSink):
    """No JSONL at all: at a terminal without --jsonl, the human lines are the output."""

    def __init__(self) -> None:
        self.path = None
        self.lines = 0

    def write(self, lines: list[str]) -> None:
        return None

    def describe(self) -> str:
        return "none"

    def close(self) -> None:
        return None


def draw_label(bgr: np.ndarray, text: str, ok: bool = True) -> np.ndarray:
    """Draw the prediction in the top-left corner on a filled box, scaled to the frame size."""
    import cv2

    h, w = bgr.shape[:2]
    scale = max(0.4, min(w, h) / 640.0)
    thick = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(2, int(4 * scale))
    cv2.rectangle(bgr, (0, 0), (min(w - 1, tw + 2 * pad), th + base + 2 * pad), (0, 0, 0), thickness=-1)
    color = (80, 255, 80) if ok else (60, 60, 255)
    cv2.putText(bgr, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    return bgr


def label_text(record: FrameRecord) -> str:
    p = record.prediction
    if not p.ok:
        return f"error: {p.reason or p.error}"
    return f"{p.label} {(p.prob or 0.0) * 100:.1f}%"


VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class HumanLines:
    """At a terminal: one short line per frame ('frame 12  Red Mullet  93.1%  8.2 ms') instead of JSON."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._f = stream or sys.stdout

    def __call__(self, frame: Frame, record: FrameRecord) -> None:
        where = frame.name or f"frame {record.frame}"
        p = record.prediction
        if p.ok:
            ms = "" if record.latency_ms is None else f"  {record.latency_ms:.1f} ms"
            text = f"{where}  {p.label}  {(p.prob or 0.0) * 100:.1f}%{ms}"
        else:
            text = f"{where}  error: {p.reason or p.error}"
        self._f.write(text + "\n")
        self._f.flush()


class AnnotatedSaver:
    """--save FILE.mp4|.avi|.mkv|.mov: that video file; --save DIR: an annotated .avi for video/live sources,
    annotated images (same relative names) for image sources.

    A video file is written to a hidden sibling and renamed into place when complete; an existing file is never
    overwritten.
    """

    def __init__(self, directory: str | Path, as_video: bool, fps: float | None, source_id: str) -> None:
        target = Path(directory)
        self.fourcc = VIDEO_FOURCC.get(target.suffix.lower()) if not target.is_dir() else None
        self.fps = fps or 30.0
        self.source_id = source_id
        self.count = 0
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        if self.fourcc is not None:
            self._init_file(target)
            return
        if not target.exists() and target.suffix:
            raise EdgeftError(
                f"--save {target.name}: {target.suffix} is not a video format",
                path=target,
                fix=f"name a video file ({', '.join(VIDEO_FOURCC)}), or a new folder without an extension",
            )
        if not as_video and target.is_dir() and any(target.iterdir()):
            raise EdgeftError(
                "the --save folder is not empty; annotated images would overwrite the files in it",
                path=target,
                fix="pick a new or empty folder",
            )
        self.dir = target
        self.as_video = as_video
        self.fourcc = "MJPG"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeftError(
                f"cannot create the --save directory ({exc.strerror})",
                path=self.dir,
                fix="pick a writable directory, or a video file name ending in .mp4 or .avi",
            ) from None
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in source_id).strip("._") or "stream"
        self.video_path = self.dir / f"{Path(stem).stem}.annotated.avi"
        self._partial = self.video_path
        if as_video and self.video_path.exists():
            raise EdgeftError(
                "--save would overwrite an existing file", path=self.video_path, fix="pick another folder, or move it"
            )

    def _init_file(self, path: Path) -> None:
        if path.exists():
            raise EdgeftError(
                "--save would overwrite an existing file", path=path, fix="pick a new file name, or remove it first"
            )
        if not path.parent.is_dir():
            raise EdgeftError(
                "the folder of the --save file does not exist", path=path, fix="create the folder, or pick another path"
            )
        self.dir = path.parent
        self.as_video = True
        self.video_path = path
        clean_stale_partials(path)  # a killed earlier --save of this file
        # hidden, named like every partial output (core.files), ending in the real suffix: OpenCV picks the
        # container by it
        self._partial = path.with_name(f"{partial_name(path)}{path.suffix}")

    def write(self, frame: Frame, record: FrameRecord) -> None:
        import cv2

        if frame.image is None:
            return
        bgr = draw_label(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), label_text(record), record.prediction.ok)
        if self.as_video:
            if self._writer is None:
                h, w = bgr.shape[:2]
                self._size = (w, h)
                fourcc = cv2.VideoWriter_fourcc(*self.fourcc)
                self._writer = cv2.VideoWriter(str(self._partial), fourcc, self.fps, (w, h))
                if not self._writer.isOpened():
                    raise EdgeftError(
                        f"OpenCV cannot write a {self.fourcc} video here",
                        path=self.video_path,
                        fix="pick another --save path (.avi is the most portable)",
                    )
            if (bgr.shape[1], bgr.shape[0]) != self._size:
                bgr = cv2.resize(bgr, self._size)  # a reconnected camera may come back at another resolution
            self._writer.write(bgr)
        else:
            rel = Path(frame.name or f"frame_{frame.index:06d}.png")
            if rel.is_absolute() or ".." in rel.parts:
                rel = Path(f"{frame.index:06d}_{rel.name}")  # never write outside --save (or over the inputs)
            out = self.dir / rel
            if out.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"):
                out = out.with_suffix(".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(out), bgr):
                raise EdgeftError("OpenCV could not write the annotated image", path=out, fix="check disk space")
        self.count += 1

    def describe(self) -> str:
        return f"{self.video_path} ({self.count} frames)" if self.as_video else f"{self.dir} ({self.count} images)"

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            if self._partial != self.video_path:
                os.replace(self._partial, self.video_path)
