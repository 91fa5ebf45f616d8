"""Live sources (a camera, an rtsp:// or http(s):// stream): newest frame only, reconnect with backoff.

A capture thread keeps only the newest frame, so a slow model never builds lag; overwritten frames are
counted as dropped. A lost source is reopened with exponential backoff, and gives up with a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.serve.sources.base import Capture, CaptureFactory, Frame, FrameSource, default_open_capture, redact_url

log = logging.getLogger("edgeft.serve")


@dataclass
class ReconnectPolicy:
    """Exponential backoff for lost live sources: base, 2*base, 4*base ... capped at max_delay_s."""

    enabled: bool = True
    max_retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    # a source that never opened is most likely absent (no camera, wrong URL): give up within seconds
    startup_retries: int = 2

    def retries(self, ever_opened: bool) -> int:
        return self.max_retries if ever_opened else min(self.max_retries, self.startup_retries)

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * (2 ** max(0, attempt - 1)))


def no_video_devices() -> bool:
    """True on Linux when no /dev/video* device exists at all (elsewhere: unknown, False)."""
    dev = Path("/dev")
    return sys.platform.startswith("linux") and dev.is_dir() and not any(dev.glob("video*"))


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
                if not self.policy.enabled or self._failures > self.policy.retries(self.session > 0):
                    self._error = self._open_error(self._failures)
                    return None
                delay = self.policy.delay(self._failures)
                log.warning(
                    "%s: cannot open; retry %d/%d in %.2f s",
                    self._describe_target(),
                    self._failures,
                    self.policy.retries(self.session > 0),
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
        retry = "" if self.session == 0 else ", or raise --max-retries"  # a source that never opened: not a blip
        if isinstance(self.target, int):
            if self.session == 0 and no_video_devices():
                msg += " (this machine has no camera: /dev/video* does not exist)"
            fix = (
                "check the camera is plugged in and not used by another process (ls /dev/video*), "
                f"pick the right --camera index{retry}"
            )
        else:
            fix = f"check the URL, network and credentials (try it with ffplay or VLC){retry}"
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
