"""Bundle -> predictions: decode, preprocess (runtime/preprocess.py), batch, infer, softmax, top-k.

`Predictor` is the one inference entry point the CLI and the server build on; `DynamicBatcher` merges
single-image requests from many threads into engine batches.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeft.errors import EdgeftError
from edgeft.manifest import BundleManifest, PreprocessSpec
from edgeft.runtime.backends import Backend, default_options, open_backend
from edgeft.runtime.preprocess import ImageDecodeError, load_image, preprocess, to_rgb

Item = str | Path | Image.Image | np.ndarray | bytes


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 with max-subtraction, so large logits never overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, ties broken by lower index (deterministic)."""
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]


@dataclass
class Prediction:
    """One input's result; `error` is set (and label is None) when the input could not be decoded."""

    source: str
    label: str | None = None
    index: int = -1
    prob: float = 0.0
    topk: list[tuple[str, float]] = field(default_factory=list)
    logits: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, with_logits: bool = False) -> dict[str, Any]:
        """JSON-ready view (logits only on request: they are large and rarely needed)."""
        d: dict[str, Any] = {
            "source": self.source,
            "label": self.label,
            "index": self.index,
            "prob": self.prob,
            "topk": [[name, p] for name, p in self.topk],
            "error": self.error,
        }
        if with_logits:
            d["logits"] = None if self.logits is None else [float(v) for v in self.logits]
        return d


def item_source(item: Any, position: int) -> str:
    """A printable name for an input: the path, or a placeholder with its position for in-memory data."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, bytes):
        return f"<bytes #{position}>"
    if isinstance(item, Image.Image):
        return f"<image #{position}>"
    if isinstance(item, np.ndarray):
        return f"<array #{position}>"
    return f"<{type(item).__name__} #{position}>"


def prepare_item(item: Item, spec: PreprocessSpec, source: str | None = None) -> np.ndarray:
    """Any supported input -> (3, S, S) float32; raises ImageDecodeError for unusable input.

    np.ndarray inputs are either HxWx3 uint8 RGB images (preprocessed here) or already-preprocessed
    (3, S, S) float32 tensors (passed through unchanged).
    """
    s = spec.input_size
    name = source or item_source(item, 0)
    if isinstance(item, np.ndarray):
        if item.dtype == np.float32 and item.shape == (3, s, s):
            return np.ascontiguousarray(item)
        if item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3 and min(item.shape[:2]) >= 1:
            return preprocess(Image.fromarray(item, "RGB"), spec)
        raise ImageDecodeError(
            f"array of shape {item.shape} and dtype {item.dtype} is neither an HxWx3 uint8 RGB image "
            f"nor a preprocessed (3, {s}, {s}) float32 tensor",
            reason="unsupported_array",
            path=name,
        )
    if isinstance(item, Image.Image):
        return preprocess(to_rgb(item), spec)
    if isinstance(item, (str, Path, bytes)):
        return preprocess(load_image(item, name=name), spec)
    raise ImageDecodeError(
        f"unsupported input type {type(item).__name__}; pass a path, bytes, PIL image or numpy array",
        reason="unsupported_type",
        path=name,
    )


def default_workers() -> int:
    """Decode threads: PIL releases the GIL while decoding and resizing, so a few threads overlap the engine."""
    return max(1, min(4, os.cpu_count() or 1))


def pipelined_batches(
    items: Iterable[Any],
    prepare: Callable[[Any, int], np.ndarray],
    batch_size: int,
    pool: ThreadPoolExecutor,
) -> Iterator[tuple[list[tuple[int, Any]], list[np.ndarray | BaseException]]]:
    """Yield ([(position, item)], prepared arrays or exceptions) per batch, preparing the next batch meanwhile.

    Items are pulled lazily and only one batch of look-ahead is in flight, so memory stays bounded
    and an endless stream (a camera, a benchmark) works.
    """
    it = enumerate(items)

    def submit() -> tuple[list[tuple[int, Any]], list[Future]]:
        chunk = list(itertools.islice(it, batch_size))
        return chunk, [pool.submit(prepare, item, i) for i, item in chunk]

    pending = submit()
    while pending[0]:
        chunk, futures = pending
        pending = submit()
        prepared: list[np.ndarray | BaseException] = []
        for fut in futures:
            try:
                prepared.append(fut.result())
            except Exception as exc:  # one bad input must not sink its batch
                prepared.append(exc)
        yield chunk, prepared


def describe_failure(exc: Any) -> str:
    """'reason: message' for a failed input; the reason tag comes from ImageDecodeError."""
    if isinstance(exc, ImageDecodeError):
        return f"{exc.reason}: {exc.message}"
    return f"preprocess_failed: {type(exc).__name__}: {exc}"


class Predictor:
    """Classify images with a bundle: `Predictor(bundle_dir).predict(["a.jpg", ...])`."""

    def __init__(
        self,
        bundle_dir: str | Path,
        backend: str = "auto",
        precision: str = "fp32",
        batch_size: int = 8,
        topk: int = 5,
        verify: bool = True,
        workers: int | None = None,
        **backend_options: Any,
    ) -> None:
        if batch_size < 1:
            raise EdgeftError(f"batch_size must be >= 1, got {batch_size}", fix="e.g. --batch-size 8")
        if topk < 1:
            raise EdgeftError(f"topk must be >= 1, got {topk}", fix="e.g. --topk 5")
        options = {**default_options(batch_size), **backend_options}
        backend_obj = open_backend(bundle_dir, backend, precision, verify=verify, **options)
        self._setup(backend_obj, batch_size, topk, workers)

    def _setup(self, backend: Backend, batch_size: int, topk: int, workers: int | None) -> None:
        self.backend: Backend = backend
        self.bundle_dir = backend.bundle_dir
        self.bundle: BundleManifest = backend.bundle
        self.classes: list[str] = list(self.bundle.classes)
        self.spec: PreprocessSpec = self.bundle.preprocess_spec
        self.batch_size = int(batch_size)
        self.topk = min(int(topk), len(self.classes))
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="edgeft-decode")

    @classmethod
    def from_backend(
        cls, backend: Backend, batch_size: int = 8, topk: int = 5, workers: int | None = None
    ) -> Predictor:
        """Wrap an already loaded backend (bench, tests, custom engines); closing the Predictor closes it."""
        if batch_size < 1 or topk < 1:
            raise EdgeftError(f"need batch_size >= 1 and topk >= 1, got {batch_size}, {topk}", fix="fix the values")
        self = cls.__new__(cls)
        self._setup(backend.load(), batch_size, topk, workers)
        return self

    def describe(self) -> str:
        """Which backend and artifact actually run, e.g. 'openvino:CPU int8 (openvino-int8)'."""
        return self.backend.describe()

    def prepare(self, item: Item, source: str | None = None) -> np.ndarray:
        """Decode and preprocess one input to (3, S, S) float32 (raises ImageDecodeError)."""
        return prepare_item(item, self.spec, source)

    def predict_tensor(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, num_classes) float32 logits, in chunks of batch_size."""
        if batch.ndim == 4 and batch.shape[0] > self.batch_size:
            return np.concatenate(
                [self.backend.infer(batch[i : i + self.batch_size]) for i in range(0, batch.shape[0], self.batch_size)]
            )
        return self.backend.infer(batch)

    def make_prediction(self, source: str, logits: np.ndarray) -> Prediction:
        """One logits row -> Prediction with softmax probabilities and the top-k labels."""
        probs = softmax(logits[None])[0]
        order = topk_indices(probs, self.topk)
        top = [(self.classes[i], float(probs[i])) for i in order]
        best = int(order[0])
        return Prediction(
            source=source,
            label=self.classes[best],
            index=best,
            prob=float(probs[best]),
            topk=top,
            logits=np.asarray(logits, np.float32).copy(),
        )

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        """Predict every input, in order; undecodable inputs get a Prediction with `error` set."""
        if isinstance(items, np.ndarray) and items.ndim == 4:  # a stack of images or tensors
            items = list(items)
        elif isinstance(items, (str, Path, bytes, np.ndarray, Image.Image)):
            items = [items]
        return list(self.predict_iter(items))

    def predict_iter(self, items: Iterable[Item]) -> Iterator[Prediction]:
        """Stream predictions for a (possibly endless) iterable; decoding of batch k+1 overlaps inference of batch k."""

        def prepare(item: Item, i: int) -> np.ndarray:
            return prepare_item(item, self.spec, item_source(item, i))

        for chunk, prepared in pipelined_batches(items, prepare, self.batch_size, self._pool):
            good = [j for j, x in enumerate(prepared) if isinstance(x, np.ndarray)]
            logits = self.backend.infer(np.stack([prepared[j] for j in good])) if good else None
            rows = dict(zip(good, logits, strict=True)) if logits is not None else {}
            for j, (i, item) in enumerate(chunk):
                source = item_source(item, i)
                if j in rows:
                    yield self.make_prediction(source, rows[j])
                else:
                    yield Prediction(source=source, error=describe_failure(prepared[j]))

    def batcher(self, max_batch: int | None = None, max_wait_ms: float = 5.0, max_queue: int = 64) -> DynamicBatcher:
        """A DynamicBatcher feeding this predictor's backend (submit prepared (3, S, S) tensors)."""
        s = self.spec.input_size
        return DynamicBatcher(
            self.backend.infer,
            max_batch=max_batch or self.batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            item_shape=(3, s, s),
        )

    def close(self) -> None:
        """Stop the decode threads and release the backend."""
        self._pool.shutdown(wait=True)
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QueueFull(EdgeftError):
    """The DynamicBatcher's bounded queue is full: the caller should shed load (e.g. HTTP 503)."""


@dataclass(frozen=True)
class BatcherStats:
    """Counters of a DynamicBatcher, for /metrics."""

    batches: int
    items: int
    rejected: int
    errors: int
    cancelled: int
    queue_depth: int
    max_queue: int
    max_batch: int
    batch_size_histogram: dict[int, int]
    busy_seconds: float

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "rejected": self.rejected,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "queue_depth": self.queue_depth,
            "max_queue": self.max_queue,
            "max_batch": self.max_batch,
            "mean_batch_size": self.mean_batch_size,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_size_histogram.items())},
            "busy_seconds": self.busy_seconds,
        }


_STOP = object()


class DynamicBatcher:
    """Merge concurrent single-item requests into engine batches on one worker thread.

    The worker waits for the first item, then collects more until `max_batch` items or `max_wait_ms`
    have passed, runs ONE `infer_fn` call and resolves each future with its logits row. `submit`
    never blocks: a full queue raises QueueFull at once.
    """

    def __init__(
        self,
        infer_fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        item_shape: tuple[int, ...] | None = None,
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
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._batches = self._items = self._rejected = self._errors = self._cancelled = 0
        self._hist: dict[int, int] = {}
        self._busy = 0.0
        self._thread = threading.Thread(target=self._run, name="edgeft-batcher", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, x: np.ndarray) -> Future:
        """Queue one (3, S, S) float32 tensor; the future's result is its logits row."""
        if self._closed:
            raise EdgeftError("the batcher is closed", fix="create a new DynamicBatcher (or Predictor.batcher())")
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.dtype != np.float32:
            raise EdgeftError(
                f"batcher items must be (3, S, S) float32 arrays, got "
                f"{type(x).__name__} {getattr(x, 'shape', '')} {getattr(x, 'dtype', '')}",
                fix="submit Predictor.prepare(image)",
            )
        if self.item_shape is None:
            with self._lock:
                if self.item_shape is None:
                    self.item_shape = tuple(x.shape)
        if tuple(x.shape) != self.item_shape:
            raise EdgeftError(
                f"batcher item shape {tuple(x.shape)} differs from {self.item_shape}",
                fix="preprocess every image with the bundle's spec",
            )
        fut: Future = Future()
        try:
            self._queue.put_nowait((x, fut))
        except queue.Full:
            with self._lock:
                self._rejected += 1
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

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            live = [(x, f) for x, f in batch if f.set_running_or_notify_cancel()]
            if len(live) < len(batch):
                with self._lock:
                    self._cancelled += len(batch) - len(live)
            if not live:
                continue
            t0 = time.perf_counter()
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
                with self._lock:
                    self._errors += 1
                continue
            finally:
                elapsed = time.perf_counter() - t0
                with self._lock:
                    self._busy += elapsed
            with self._lock:
                self._batches += 1
                self._items += len(live)
                self._hist[len(live)] = self._hist.get(len(live), 0) + 1
            for i, (_, f) in enumerate(live):
                f.set_result(out[i].copy())
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
                with self._lock:
                    self._cancelled += 1

    def stats(self) -> BatcherStats:
        """A consistent snapshot of the counters (for /metrics)."""
        with self._lock:
            return BatcherStats(
                batches=self._batches,
                items=self._items,
                rejected=self._rejected,
                errors=self._errors,
                cancelled=self._cancelled,
                queue_depth=self._queue.qsize(),
                max_queue=self.max_queue,
                max_batch=self.max_batch,
                batch_size_histogram=dict(self._hist),
                busy_seconds=self._busy,
            )

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
