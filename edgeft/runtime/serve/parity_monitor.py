"""Online parity: re-run a seeded random sample of live inputs through the bundle's FP32 reference.

The served model (INT8, FP16, another engine) should pick the same top-1 class as the FP32 reference.
Samples go through a small bounded queue to a low-priority daemon thread; `offer` never blocks the
serving path: when the queue is full the sample is dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError

log = logging.getLogger("edgeft.serve")

InferFn = Callable[[np.ndarray], np.ndarray]
ReferenceFactory = Callable[[], tuple[InferFn, Callable[[], None], str]]


def bundle_reference(bundle_dir: str | Path, threads: int = 1) -> ReferenceFactory:
    """Factory for the bundle's FP32 reference (the artifact named bundle.reference, else onnxruntime fp32)."""

    def load() -> tuple[InferFn, Callable[[], None], str]:
        from edgeft.manifest import BundleManifest
        from edgeft.runtime.backends import create_backend, open_backend, verify_artifact

        bundle = BundleManifest.load(bundle_dir)
        names = [a["name"] for a in bundle.artifacts]
        if bundle.reference in names:
            art = bundle.artifact(bundle.reference)
            spec = {"onnx": "onnxruntime:cpu", "openvino": "openvino:CPU"}.get(art.format)
            if spec is not None:
                verify_artifact(bundle, bundle_dir, art)
                backend = create_backend(bundle_dir, bundle, spec, art, threads=threads, hint="LATENCY").load()
                return backend.infer, backend.close, backend.describe()
        backend = open_backend(bundle_dir, "onnxruntime", "fp32", threads=threads)
        return backend.infer, backend.close, backend.describe()

    return load


def _lower_thread_priority() -> None:
    """Best effort: renice this thread (Linux sets nice per thread id); engine threads it creates inherit it."""
    with contextlib.suppress(AttributeError, OSError, PermissionError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


@dataclass
class ParitySnapshot:
    """Numbers for status lines and /metrics."""

    agreement: float | None
    window: int
    checked: int
    disagreements: int
    offered: int
    dropped: int
    errors: int
    alerting: bool
    reference: str

    def short(self) -> str:
        if self.agreement is None:
            return f"parity n/a (n={self.window})"
        flag = " ALERT" if self.alerting else ""
        return f"parity {self.agreement:.3f} (n={self.window}, dropped {self.dropped}){flag}"


class ParityMonitor:
    """Samples inputs, runs them through the reference in a background thread, tracks windowed top-1 agreement."""

    def __init__(
        self,
        reference: ReferenceFactory,
        *,
        sample: float,
        alert_below: float = 0.98,
        window: int = 200,
        min_samples: int | None = None,
        queue_size: int = 8,
        seed: int = 0,
        load_timeout_s: float = 120.0,
    ) -> None:
        if not 0.0 < sample <= 1.0:
            raise EdgeftError(f"parity sample rate must be in (0, 1], got {sample}", fix="e.g. --parity-sample 0.01")
        if not 0.0 <= alert_below <= 1.0:
            raise EdgeftError(
                f"parity alert level must be in [0, 1], got {alert_below}", fix="e.g. --parity-alert 0.98"
            )
        self.reference = reference
        self.sample = sample
        self.alert_below = alert_below
        self.window = max(1, window)
        self.min_samples = max(1, min(min_samples if min_samples is not None else 50, self.window))
        self.load_timeout_s = load_timeout_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[np.ndarray, int] | None] = queue.Queue(maxsize=max(1, queue_size))
        self._results: deque[bool] = deque(maxlen=self.window)
        self._ready = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._load_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.reference_name = "?"
        self.offered = self.dropped = self.checked = self.disagreements = self.errors = 0
        self.alerting = False

    def start(self) -> ParityMonitor:
        """Load the reference in the worker thread (so its engine threads are low priority) and wait for it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgeft-parity", daemon=True)
            self._thread.start()
            if not self._ready.wait(self.load_timeout_s):
                raise EdgeftError(
                    "the parity reference did not load in time", fix="retry, or run without --parity-sample"
                )
            if self._load_error is not None:
                err = self._load_error
                if isinstance(err, EdgeftError):
                    raise EdgeftError(f"cannot load the parity reference: {err.message}", path=err.path, fix=err.fix)
                raise EdgeftError(
                    f"cannot load the parity reference ({type(err).__name__}: {err})",
                    fix="check the bundle's reference artifact, or run without --parity-sample",
                )
        return self

    def offer(self, x: np.ndarray, served_top1: int) -> bool:
        """Maybe queue one preprocessed (3, S, S) input with the served top-1; never blocks. True if queued."""
        with self._lock:
            if self._rng.random() >= self.sample:
                return False
            self.offered += 1
            try:
                self._queue.put_nowait((np.array(x, np.float32, copy=True), int(served_top1)))
            except queue.Full:
                self.dropped += 1
                return False
            self._pending += 1
        return True

    def _run(self) -> None:
        _lower_thread_priority()
        try:
            infer, close, name = self.reference()
            self.reference_name = name
        except BaseException as exc:  # reported by start() in the caller's thread
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                x, served = item
                try:
                    ref = int(np.argmax(infer(x[None])[0]))
                    self._record(ref == served)
                except Exception as exc:  # a failing reference must never take serving down
                    with self._lock:
                        self.errors += 1
                    log.warning("parity reference failed on a sample (%s: %s)", type(exc).__name__, exc)
                finally:
                    with self._lock:
                        self._pending -= 1
                        self._idle.notify_all()
        finally:
            with contextlib.suppress(Exception):
                close()

    def _record(self, agree: bool) -> None:
        with self._lock:
            self._results.append(agree)
            self.checked += 1
            self.disagreements += 0 if agree else 1
            n = len(self._results)
            agreement = sum(self._results) / n
            crossing = None
            if n >= self.min_samples and agreement < self.alert_below and not self.alerting:
                self.alerting, crossing = True, "below"
            elif self.alerting and agreement >= self.alert_below:
                self.alerting, crossing = False, "recovered"
        if crossing == "below":
            log.warning(
                "parity alert: top-1 agreement with the FP32 reference fell to %.3f over the last %d samples "
                "(alert below %.3f); the served model may be drifting from its reference",
                agreement,
                n,
                self.alert_below,
            )
        elif crossing == "recovered":
            log.info("parity recovered: top-1 agreement %.3f over the last %d samples", agreement, n)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued sample is checked (tests and clean shutdown use it)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    @property
    def agreement(self) -> float | None:
        with self._lock:
            return sum(self._results) / len(self._results) if self._results else None

    def snapshot(self) -> ParitySnapshot:
        with self._lock:
            n = len(self._results)
            return ParitySnapshot(
                agreement=sum(self._results) / n if n else None,
                window=n,
                checked=self.checked,
                disagreements=self.disagreements,
                offered=self.offered,
                dropped=self.dropped,
                errors=self.errors,
                alerting=self.alerting,
                reference=self.reference_name,
            )

    def close(self, drain_s: float = 2.0) -> None:
        """Let queued samples finish (bounded), then stop the worker."""
        if self._thread is None:
            return
        self.wait_idle(drain_s)
        while True:
            try:
                self._queue.put(None, timeout=drain_s)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout=drain_s)
        self._thread = None

    def __enter__(self) -> ParityMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
