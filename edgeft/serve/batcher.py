"""DynamicBatcher: merge single-image requests from many threads into engine batches.

An engine runs a batch of 8 much faster than 8 batches of 1; concurrent HTTP requests each carry one or a
few images. The batcher queues them (bounded: a full queue is refused at once, never waited on) and one
worker thread runs them in batches. It counts nothing itself: whoever serves it (the HTTP app) measures
through its infer function, so there is one set of metrics.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from edgeft.core.errors import EdgeftError


class QueueFull(EdgeftError):
    """The DynamicBatcher's bounded queue is full: the caller should shed load (e.g. HTTP 503)."""


_STOP = object()


class DynamicBatcher:
    """One worker thread: wait for an item, gather more for up to max_wait_ms (at most max_batch), run one batch.

    `submit` never blocks: a full queue raises QueueFull at once. Each future's result is its logits row.
    """

    def __init__(
        self,
        infer_fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        item_shape: tuple[int, ...] | None = None,
        item_dtype: str = "float32",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise EdgeftError(
                f"invalid batcher settings max_batch={max_batch} max_queue={max_queue} max_wait_ms={max_wait_ms}",
                fix="use max_batch >= 1, max_queue >= 1, max_wait_ms >= 0",
            )
        self.infer_fn = infer_fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.item_shape = tuple(item_shape) if item_shape is not None else None
        self.item_dtype = np.dtype(item_dtype)  # float32 tensors, or uint8 images for an image-input engine
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgeft-batcher", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Items waiting (not counting the batch being run)."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_item(self, x: np.ndarray) -> None:
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.dtype != self.item_dtype:
            raise EdgeftError(
                f"batcher items must be {self.item_shape or '3-d'} {self.item_dtype} arrays, got "
                f"{type(x).__name__} {getattr(x, 'shape', '')} {getattr(x, 'dtype', '')}",
                fix="submit Predictor.prepare(image)",
            )
        with self._lock:
            if self.item_shape is None:
                self.item_shape = tuple(x.shape)
        if tuple(x.shape) != self.item_shape:
            raise EdgeftError(
                f"batcher item shape {tuple(x.shape)} differs from {self.item_shape}",
                fix="preprocess every image with the bundle's spec",
            )

    def submit(self, x: np.ndarray) -> Future:
        """Queue one prepared item (`Predictor.prepare`); raises QueueFull at once when the queue is full."""
        if self._closed:
            raise EdgeftError("the batcher is closed", fix="create a new DynamicBatcher (or Predictor.batcher())")
        self._check_item(x)
        fut: Future = Future()
        try:
            self._queue.put_nowait((x, fut))
        except queue.Full:
            raise QueueFull(
                f"inference queue is full ({self.max_queue} requests waiting)",
                fix="retry later, raise max_queue, or add capacity",
            ) from None
        return fut

    def _collect(self, first: tuple) -> tuple[list[tuple], bool]:
        """Gather up to max_batch items, waiting at most max_wait after the first; report a seen stop."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _run_batch(self, live: list[tuple[np.ndarray, Future]]) -> None:
        try:
            out = np.asarray(self.infer_fn(np.stack([x for x, _ in live])))
            if out.ndim < 1 or out.shape[0] != len(live):
                raise EdgeftError(
                    f"infer_fn returned shape {out.shape} for a batch of {len(live)}",
                    fix="infer_fn must return one row per input",
                )
        except BaseException as exc:  # every waiter must hear about the failure
            for _, f in live:
                f.set_exception(exc)
            return
        for i, (_, f) in enumerate(live):
            f.set_result(out[i].copy())

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            live = [(x, f) for x, f in batch if f.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)
        self._cancel_pending()

    def _cancel_pending(self) -> None:
        """Cancel whatever is still queued (a submit that raced with close())."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item[1].cancel():
                item[1].set_running_or_notify_cancel()  # wakes concurrent.futures.wait() callers

    def close(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop accepting work; drain=True finishes queued requests, drain=False cancels them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not drain:
            self._cancel_pending()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
