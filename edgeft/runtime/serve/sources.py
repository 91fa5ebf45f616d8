"""Frame sources for `edgeft serve`: cameras, video files, MJPEG/RTSP URLs and image folders, via OpenCV.

Two delivery policies:
- live sources (camera, rtsp/http URL) run a capture thread that keeps only the newest frame, so a slow
  model never builds lag; overwritten frames are counted as dropped. A lost source is reopened with
  exponential backoff.
- ordered sources (video file, image directory or glob) read every frame in order through a small
  bounded prefetch queue (the reader waits, it never drops) and end cleanly.

The capture factory is injectable (`open_capture`) so tests can hand in captures that fail mid-stream.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.runtime.preprocess import ImageDecodeError, load_image

log = logging.getLogger("edgeft.serve")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
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


def default_open_capture(target: int | str) -> Capture:
    """Open a camera index, URL or file with OpenCV; URLs get open/read timeouts so a dead stream cannot hang."""
    import cv2

    if isinstance(target, int):
        cap = cv2.VideoCapture(target)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # driver-side buffering adds lag; we keep our own newest frame
        return cap
    if target.startswith(LIVE_SCHEMES):
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            URL_OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            URL_READ_TIMEOUT_MS,
        ]
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(target)


def redact_url(url: str) -> str:
    """rtsp://user:pass@host/x -> rtsp://host/x: source ids end up in logs and JSONL."""
    return re.sub(r"^([a-z]+://)[^/@]*@", r"\1", url)


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


@dataclass
class ReconnectPolicy:
    """Exponential backoff for lost live sources: base, 2*base, 4*base ... capped at max_delay_s."""

    enabled: bool = True
    max_retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * (2 ** max(0, attempt - 1)))


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


class LiveCaptureSource(FrameSource):
    """Camera or stream URL: a capture thread keeps only the newest frame and reconnects when the source is lost."""

    live = True
    kind = "live"

    def __init__(
        self,
        target: int | str,
        *,
        open_capture: CaptureFactory | None = None,
        reconnect: ReconnectPolicy | None = None,
        source_id: str | None = None,
    ) -> None:
        super().__init__(source_id or (f"camera:{target}" if isinstance(target, int) else redact_url(str(target))))
        self.target = target
        self.open_capture = open_capture or default_open_capture
        self.policy = reconnect or ReconnectPolicy()
        self._cond = threading.Condition()
        self._slot: tuple[np.ndarray, int, float, float, int] | None = None
        self._failures = 0
        self.session = 0

    def _describe_target(self) -> str:
        return f"camera {self.target}" if isinstance(self.target, int) else f"stream {self.source_id}"

    def _open(self) -> Capture | None:
        """Open, backing off after failures; None when stopped or the retries are spent (self._error is then set).

        `_failures` counts consecutive failed attempts (an open that fails, or a session that delivers no frame)
        and is reset by the first frame read, so a camera that opens but never streams cannot spin forever.
        """
        while not self._stop.is_set():
            if self._failures:
                if not self.policy.enabled or self._failures > self.policy.max_retries:
                    self._error = self._open_error(self._failures)
                    return None
                delay = self.policy.delay(self._failures)
                log.warning(
                    "%s: cannot open; retry %d/%d in %.2f s",
                    self._describe_target(),
                    self._failures,
                    self.policy.max_retries,
                    delay,
                )
                if self._stop.wait(delay):
                    return None
            cap = None
            try:
                cap = self.open_capture(self.target)
                if cap is not None and cap.isOpened():
                    self.stats.opens += 1
                    self.session += 1
                    if self.session > 1:
                        self.stats.reconnects += 1
                        log.warning("%s: reconnected (connection %d)", self._describe_target(), self.session)
                    fps = float(cap.get(5) or 0.0)  # cv2.CAP_PROP_FPS
                    self.fps = fps if 0.0 < fps < 1000.0 else self.fps
                    return cap
            except Exception as exc:  # a capture backend raising must count as a failed attempt, not kill the thread
                log.warning("%s: open raised %s: %s", self._describe_target(), type(exc).__name__, exc)
            if cap is not None:
                with contextlib.suppress(Exception):
                    cap.release()
            self._failures += 1
            self.stats.failed_attempts += 1
        return None

    def _open_error(self, attempts: int) -> EdgeftError:
        what = self._describe_target()
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        if self.session == 0:
            msg = f"cannot open {what} {tries}"
        elif self.stats.frames_read == 0:
            msg = f"{what} opens but delivers no frames ({tries})"
        else:
            msg = f"lost {what} and could not reconnect {tries}"
        if isinstance(self.target, int):
            fix = (
                "check the camera is plugged in and not used by another process (ls /dev/video*), "
                "pick the right --camera index, or raise --max-retries"
            )
        else:
            fix = "check the URL, network and credentials (try it with ffplay or VLC), or raise --max-retries"
        return EdgeftError(msg, path=None, fix=fix)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                return
            got = 0
            try:
                while not self._stop.is_set():
                    ok, bgr = cap.read()
                    if not ok or bgr is None:
                        break
                    got += 1
                    self._failures = 0
                    now = time.time()
                    with self._cond:
                        if self._slot is not None:
                            self.stats.dropped += 1
                        self._slot = (bgr, index, now, time.perf_counter(), self.session)
                        self.stats.frames_read += 1
                        self._cond.notify()
                    index += 1
            finally:
                with contextlib.suppress(Exception):
                    cap.release()
            if self._stop.is_set():
                return
            if not self.policy.enabled:
                log.warning("%s: stream ended (reconnect is off)", self._describe_target())
                return
            if got == 0:
                self._failures += 1
                self.stats.failed_attempts += 1
                log.warning("%s: opened but delivered no frame", self._describe_target())
            else:
                log.warning("%s: lost after frame %d; reconnecting", self._describe_target(), index - 1)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def next_frames(self, max_n: int, timeout: float) -> list[Frame]:
        """The newest frame only (max_n is ignored: batching stale frames would add lag)."""
        import cv2

        deadline = time.monotonic() + timeout
        with self._cond:
            while self._slot is None and not self._ended.is_set() and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            slot, self._slot = self._slot, None
        if slot is None:
            self._raise_if_failed()
            return []
        bgr, index, ts, t_ready, session = slot
        self.stats.delivered += 1
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return [Frame(index, rgb, ts, t_ready, self.source_id, session=session)]

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._ended.is_set() and self._slot is None and self._error is None

    @property
    def depth(self) -> int:
        return 1 if self._slot is not None else 0


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


def list_images(directory: Path) -> list[Path]:
    """Image files under a directory (recursively), in sorted path order so runs are reproducible."""
    return sorted(
        (p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(directory).as_posix(),
    )


def is_live_url(source: str) -> bool:
    return source.lower().startswith(LIVE_SCHEMES)


@dataclass
class SourceOptions:
    """Everything open_source needs besides the target (kept together so the CLI and tests share defaults)."""

    reconnect: bool | None = None
    max_retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    prefetch: int = 16
    open_capture: CaptureFactory | None = None


def open_source(
    camera: int | None = None, source: str | None = None, options: SourceOptions | None = None
) -> FrameSource:
    """Pick the source class for --camera INDEX or --source PATH|URL|GLOB (not started yet)."""
    opts = options or SourceOptions()
    if (camera is None) == (source is None):
        raise EdgeftError("give exactly one of a camera index or a source", fix="use --camera INDEX or --source PATH")

    def policy() -> ReconnectPolicy:
        enabled = True if opts.reconnect is None else opts.reconnect
        return ReconnectPolicy(enabled, opts.max_retries, opts.backoff_s, opts.max_backoff_s)

    if camera is not None:
        if camera < 0:
            raise EdgeftError(f"camera index must be >= 0, got {camera}", fix="e.g. --camera 0")
        return LiveCaptureSource(camera, open_capture=opts.open_capture, reconnect=policy())
    assert source is not None
    if is_live_url(source):
        return LiveCaptureSource(source, open_capture=opts.open_capture, reconnect=policy())
    path = Path(source).expanduser()
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise EdgeftError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this directory",
                path=path,
                fix="point --source at a folder of images, a video file or a glob like 'frames/*.jpg'",
            )
        return ImageListSource(files, path.name or str(path), root=path, prefetch=opts.prefetch)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageListSource([path], path.name, root=path.parent, prefetch=opts.prefetch)
        return VideoFileSource(path, open_capture=opts.open_capture, prefetch=opts.prefetch)
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise EdgeftError(
                f"the glob {source!r} matches no files",
                fix="check the pattern; quote it so the shell does not expand it",
            )
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        return ImageListSource(files, source, root=root, prefetch=opts.prefetch)
    raise EdgeftError(
        "source not found (not a file, directory, glob or rtsp/http URL)",
        path=path,
        fix="check the path, or use --camera INDEX for a camera",
    )


class PacedCapture:
    """Wrap a capture so reads come at the video's real frame rate: replays a file as if it were a live camera."""

    def __init__(self, cap: Capture, fps: float | None = None) -> None:
        self.cap = cap
        got = float(cap.get(5) or 0.0)
        self.fps = fps or (got if got > 0 else 30.0)
        self._t0: float | None = None
        self._n = 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.cap.isOpened()

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        due = self._t0 + self._n / self.fps
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self._n += 1
        return self.cap.read()

    def get(self, prop: int) -> float:
        return self.cap.get(prop)

    def release(self) -> None:
        self.cap.release()
