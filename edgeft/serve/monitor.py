"""Online parity: re-run a seeded random sample of live inputs through the bundle's FP32 reference.

The served model (INT8, FP16, another engine) should predict what the FP32 reference predicts. The sampled
window is judged exactly as export judged the artifact: THE comparator (`edgeft.check.comparator.compare`)
and THE gate (`edgeft.check.gate.Gate`), so the monitor cannot disagree with `edgeft parity` about what
"agrees" means. Samples go through a small bounded queue to a low-priority daemon thread: `offer` never
blocks the serving path; when the queue is full the sample is dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.check.comparator import compare
from edgeft.check.gate import FAIL, Gate
from edgeft.check.parity import reference_engine
from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import BundleManifest, GateRecord
from edgeft.serve.config import ParityOptions

log = logging.getLogger("edgeft.serve")

ReferenceFactory = Callable[[], Any]  # -> a loaded engine: .infer(batch), .describe(), .close()


def bundle_reference(bundle_dir: str | Path, threads: int = 1) -> ReferenceFactory:
    """The bundle's FP32 reference as `edgeft parity --reference onnx` picks it, on few threads (it runs beside serving)."""

    def load() -> Any:
        bundle = BundleManifest.load(bundle_dir)
        engine, _note = reference_engine(bundle, Path(bundle_dir), None, "onnx", batch_size=1, threads=threads)
        return engine.load()

    return load


def _lower_thread_priority() -> None:
    """Best effort: renice this thread (Linux sets nice per thread id); engine threads it creates inherit it."""
    with contextlib.suppress(AttributeError, OSError, PermissionError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


@dataclass(frozen=True)
class ParitySnapshot:
    """Numbers for status lines, /health and /metrics; `record` is the gate's verdict on the current window."""

    agreement: float | None
    window: int
    checked: int
    disagreements: int
    offered: int
    dropped: int
    errors: int
    alerting: bool
    reference: str
    record: GateRecord | None = None

    def short(self) -> str:
        if self.record is None:
            return f"parity n/a (n={self.window})"
        flag = " ALERT" if self.alerting else ""
        return f"parity {self.agreement:.3f} ({self.record.verdict}, n={self.window}, dropped {self.dropped}){flag}"


class ParityMonitor:
    """Samples inputs, runs them through the reference in a background thread, judges the window with THE gate.

    The gate is `Gate(min_agreement=options.alert_below, min_n=options.min_samples)` unless one is given; the
    served precision picks the rule (fp32 must match exactly, int8/fp16/bf16 must reach min_agreement).
    An alert is logged once when the verdict is fail on a window of at least min_samples, and a recovery
    once when the window passes again.
    """

    def __init__(
        self,
        reference: ReferenceFactory,
        *,
        classes: Sequence[str],
        precision: str,
        options: ParityOptions,
        gate: Gate | None = None,
        load_timeout_s: float = 120.0,
        to_tensor: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """to_tensor: turns a served row into the reference's (3, S, S) float32 input (an image-input engine's
        uint8 image is normalised), applied to sampled rows only."""
        if not options.enabled:
            raise EdgeftError("the parity sample rate must be in (0, 1]", fix="e.g. --parity-sample 0.01")
        self.reference = reference
        self.to_tensor = to_tensor
        self.classes = list(classes)
        self.precision = precision
        self.options = options
        self.gate = gate or Gate(min_agreement=options.alert_below, min_n=options.min_samples)
        self.load_timeout_s = load_timeout_s
        self._rng = random.Random(options.seed)
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=options.queue_size)
        self._served: deque[np.ndarray] = deque(maxlen=options.window)
        self._ref: deque[np.ndarray] = deque(maxlen=options.window)
        self._record: GateRecord | None = None
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
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="edgeft-parity", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.load_timeout_s):
            raise EdgeftError("the parity reference did not load in time", fix="retry, or run without --parity-sample")
        err = self._load_error
        if isinstance(err, EdgeftError):
            raise EdgeftError(f"cannot load the parity reference: {err.message}", path=err.path, fix=err.fix)
        if err is not None:
            raise EdgeftError(
                f"cannot load the parity reference ({type(err).__name__}: {err})",
                fix="check the bundle's reference artifact, or run without --parity-sample",
            )
        return self

    def offer(self, x: np.ndarray, served_logits: np.ndarray) -> bool:
        """Maybe queue one served row (a (3, S, S) tensor, or what `to_tensor` takes) with its logits row; never
        blocks. True if queued."""
        with self._lock:
            if self._rng.random() >= self.options.sample:
                return False
            self.offered += 1
            x = self.to_tensor(x) if self.to_tensor is not None else x
            item = (np.array(x, np.float32, copy=True), np.array(served_logits, np.float32, copy=True))
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.dropped += 1
                return False
            self._pending += 1
        return True

    def _run(self) -> None:
        _lower_thread_priority()
        try:
            engine = self.reference()
            self.reference_name = engine.describe()
        except BaseException as exc:  # reported by start() in the caller's thread
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (item := self._queue.get()) is not None:
                try:
                    self._check(np.asarray(engine.infer(item[0][None]))[0], item[1])
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
                engine.close()

    def _check(self, ref_row: np.ndarray, served_row: np.ndarray) -> None:
        """Judge the window with THE comparator and THE gate; log a crossing once."""
        self._ref.append(ref_row)
        self._served.append(served_row)
        n = len(self._ref)
        comparison = compare(np.stack(self._ref), np.stack(self._served), self.classes)
        record = self.gate.judge(self.precision, comparison, judged_on=f"last {n} sampled live inputs")
        with self._lock:
            self.checked += 1
            self.disagreements += int(np.argmax(ref_row) != np.argmax(served_row))
            self._record = record
            was = self.alerting
            judged = record.verdict == FAIL and n >= self.options.min_samples  # a handful of samples is noise
            self.alerting = judged or (was and not record.passed)
        if self.alerting and not was:
            log.warning(
                "parity alert: the served %s model disagrees with the FP32 reference on the last %d sampled "
                "inputs (agreement %.3f): %s",
                self.precision,
                n,
                comparison.agreement,
                "; ".join(record.reasons),
            )
        elif was and not self.alerting:
            log.info("parity recovered: agreement %.3f over the last %d samples", comparison.agreement, n)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued sample is checked (tests and clean shutdown use it)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    @property
    def agreement(self) -> float | None:
        with self._lock:
            return self._record.agreement if self._record is not None else None

    def snapshot(self) -> ParitySnapshot:
        with self._lock:
            rec = self._record
            return ParitySnapshot(
                agreement=rec.agreement if rec is not None else None,
                window=rec.n if rec is not None else 0,
                checked=self.checked,
                disagreements=self.disagreements,
                offered=self.offered,
                dropped=self.dropped,
                errors=self.errors,
                alerting=self.alerting,
                reference=self.reference_name,
                record=rec,
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


def monitor_for(predictor: Any, options: ParityOptions, reference: ReferenceFactory | None = None) -> ParityMonitor:
    """A started monitor for a Predictor's bundle (the FP32 reference of its bundle dir unless one is given)."""
    if reference is None:
        if predictor.bundle_dir is None:
            raise EdgeftError(
                "the parity monitor needs the bundle directory to load the FP32 reference",
                fix="open the Predictor from a bundle dir, or pass a reference",
            )
        reference = bundle_reference(predictor.bundle_dir)
    precision = predictor.precision or "fp32"
    to_tensor = predictor.tensor if getattr(predictor, "takes_images", False) else None
    return ParityMonitor(
        reference, classes=predictor.classes, precision=precision, options=options, to_tensor=to_tensor
    ).start()
