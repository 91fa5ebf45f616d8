"""What every frame source shares: the Frame, the capture protocol OpenCV satisfies, the source lifecycle.

A source is started (its reader thread begins), hands out frames with `next_frames`, and is closed. The
capture factory is injectable (`open_capture`) so tests can hand in captures that fail mid-stream.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
URL_OPEN_TIMEOUT_MS = 5000
URL_READ_TIMEOUT_MS = 5000


class Capture(Protocol):
    """The slice of cv2.VideoCapture that sources use (so tests and benchmarks can wrap or fake it)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[int | str], Capture]


def quiet_opencv() -> None:
    """Silence OpenCV's own log (V4L2/FFmpeg warnings on a failed open): edgeft reports the failure once, clearly."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


# FFmpeg decodes with one thread per core by default, and its threads decode the next frames while the model
# runs on the same cores: on 2 cores that doubled the camera path's median latency and tripled its p99
# (benchmarks/bench_serve_camera.py --decode-threads 0 vs 1). One decoder thread keeps up with 30 fps video
# at camera resolutions and leaves the cores to the model.
VIDEO_DECODE_THREADS = 1


def default_open_capture(target: int | str, decode_threads: int = VIDEO_DECODE_THREADS) -> Capture:
    """Open a camera index, URL or file with OpenCV; URLs get open/read timeouts so a dead stream cannot hang.

    decode_threads: FFmpeg's decoder threads for files and URLs (0: FFmpeg's own choice, one per core)."""
    quiet_opencv()
    import cv2

    if isinstance(target, int):
        cap = cv2.VideoCapture(target)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # driver-side buffering adds lag; we keep our own newest frame
        return cap
    params = [cv2.CAP_PROP_N_THREADS, decode_threads] if decode_threads > 0 else []
    if target.startswith(LIVE_SCHEMES):
        params += [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            URL_OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            URL_READ_TIMEOUT_MS,
        ]
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    return cap if cap.isOpened() else cv2.VideoCapture(target)  # a file only another backend reads


def redact_url(url: str) -> str:
    """rtsp://user:pass@host/x -> rtsp://host/x: source ids end up in logs and JSONL."""
    return re.sub(r"^([a-z]+://)[^/@]*@", r"\1", url)


def is_live_url(source: str) -> bool:
    return source.lower().startswith(LIVE_SCHEMES)


@dataclass
class Frame:
    """One decoded input: an RGB uint8 HWC image, or an error for an unreadable file."""

    index: int
    image: np.ndarray | None
    timestamp: float
    t_ready: float
    source_id: str
    name: str | None = None
    error: str | None = None
    reason: str | None = None
    session: int = 1


@dataclass
class SourceStats:
    """Counters for status lines and the final summary."""

    frames_read: int = 0
    delivered: int = 0
    dropped: int = 0
    opens: int = 0
    reconnects: int = 0
    failed_attempts: int = 0


class FrameSource:
    """Base: a started source hands out frames via `next_frames`; `finished` once it ended and was drained."""

    live: bool = False
    kind: str = "source"

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.stats = SourceStats()
        self.fps: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ended = threading.Event()

    def start(self) -> FrameSource:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_guarded, name=f"edgeft-{self.kind}", daemon=True)
            self._thread.start()
        return self

    def _run_guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the consumer thread, which raises it
            self._error = exc
        finally:
            self._ended.set()
            self._wake()

    def _run(self) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        """Unblock a consumer waiting in next_frames."""

    def next_frames(self, max_n: int, timeout: float) -> list[Frame]:
        """Up to max_n frames ([] on timeout or end); raises the reader's error once nothing is left."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        raise NotImplementedError

    @property
    def depth(self) -> int:
        """Frames waiting to be processed (the status line's queue depth)."""
        return 0

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._thread is None or not self._thread.is_alive():
            self._release()

    def _release(self) -> None:
        """Free what the constructor opened (a source closed before or after running)."""

    def __enter__(self) -> FrameSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
