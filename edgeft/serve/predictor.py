"""Bundle -> predictions: decode on a thread pool, preprocess (THE preprocessing), batch, infer, softmax, top-k.

`Predictor` is the one model wrapper on the serve path: `edgeft predict`, the stream loop, the HTTP app and
the bench all run images through it, and it produces the one `Prediction` schema.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from edgeft.core.errors import EdgeftError, ImageDecodeError
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import BundleManifest
from edgeft.core.numeric import softmax, topk_indices
from edgeft.core.preprocess import PreprocessSpec, decode_workers, normalize, preprocess, preprocess_file
from edgeft.core.reports import ParityReport, parity_file
from edgeft.engines.select import open_bundle
from edgeft.serve.batcher import DynamicBatcher
from edgeft.serve.config import PredictOptions
from edgeft.serve.schema import Label, Prediction

log = logging.getLogger("edgeft.serve")
_WARNED: set[str] = set()  # gate warnings already logged by this process (describe() still carries them)

Item = str | Path | Image.Image | np.ndarray | bytes


class EngineLike(Protocol):
    """What the Predictor needs of an engine: an edgeft.engines Engine, or a test/bench wrapper around one."""

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def on_cpu(engine: EngineLike) -> bool:
    """Whether the engine computes on the CPU (then decoding must not overlap it, see `_pipelined`). Engines
    say so themselves; a wrapper without that method (bench, tests) is taken by its device name."""
    ask = getattr(engine, "computes_on_cpu", None)
    if callable(ask):
        return bool(ask())
    return str(getattr(engine, "device", "") or "cpu").split(".")[0].lower() == "cpu"


def item_source(item: Any, position: int) -> str:
    """A printable name for an input: the path, or a placeholder with its position for in-memory data."""
    if isinstance(item, (str, Path)):
        return str(item)
    kinds = {bytes: "bytes", Image.Image: "image", np.ndarray: "array"}
    kind = next((name for cls, name in kinds.items() if isinstance(item, cls)), type(item).__name__)
    return f"<{kind} #{position}>"


def prepare_item(
    item: Item,
    spec: PreprocessSpec,
    source: str | None = None,
    max_pixels: int | None = None,
    fast: bool = False,
    out: np.ndarray | None = None,
    raw: bool = False,
) -> np.ndarray:
    """Any supported input -> (3, S, S) float32; raises ImageDecodeError for unusable input.

    np.ndarray inputs are either HxWx3 uint8 RGB images (camera frames, preprocessed here without a copy) or
    already preprocessed (3, S, S) float32 tensors (passed through). fast: --fast-preprocess, the measured
    faster resampling and JPEG decoding of `core.preprocess` (`preprocess`, `preprocess_file`). out: a
    (3, S, S) float32 array (a batch row) the result is written into; returned. raw: the (S, S, 3) uint8
    image before normalisation instead, for an engine that normalises in its graph (`core.preprocess.finish`).
    """
    s = spec.input_size
    name = source or item_source(item, 0)
    if isinstance(item, np.ndarray):
        if raw and item.dtype == np.float32 and item.shape == (3, s, s):
            raise ImageDecodeError(
                f"a preprocessed (3, {s}, {s}) float32 tensor cannot feed an engine that takes uint8 images "
                "(--fast-preprocess with OpenVINO); pass the HxWx3 uint8 image, or serve without --fast-preprocess",
                reason="unsupported_array",
                path=name,
            )
        if item.dtype == np.float32 and item.shape == (3, s, s):
            if out is None:
                return np.ascontiguousarray(item)
            out[...] = item
            return out
        if item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3 and min(item.shape[:2]) >= 1:
            return preprocess(item, spec, fast, out, raw)
        raise ImageDecodeError(
            f"array of shape {item.shape} and dtype {item.dtype} is neither an HxWx3 uint8 RGB image "
            f"nor a preprocessed (3, {s}, {s}) float32 tensor",
            reason="unsupported_array",
            path=name,
        )
    if isinstance(item, Image.Image):
        return preprocess(item, spec, fast, out, raw)
    if isinstance(item, (str, Path, bytes)):
        return preprocess_file(item, spec, name, max_pixels, fast, out, raw)
    raise ImageDecodeError(
        f"unsupported input type {type(item).__name__}; pass a path, bytes, PIL image or numpy array",
        reason="unsupported_type",
        path=name,
    )


def failed_prediction(source: str, exc: BaseException) -> Prediction:
    """The Prediction of an input that could not be decoded (a bad input never sinks its batch)."""
    if isinstance(exc, ImageDecodeError):
        return Prediction(source=source, error=exc.message, reason=exc.reason)
    return Prediction(source=source, error=f"{type(exc).__name__}: {exc}", reason="preprocess_failed")


def _pipelined(
    items: Iterable[Any],
    prepare: Callable[[Any, int, np.ndarray], np.ndarray],
    batch_size: int,
    pool: ThreadPoolExecutor,
    shape: tuple[int, ...],
    shares: int,
    overlap: bool = True,
    dtype: np.dtype | type = np.float32,
) -> Iterator[tuple[list[tuple[int, Any]], np.ndarray, dict[int, BaseException]]]:
    """Yield ([(position, item)], batch array, {row: exception}) per batch, prepared by the pool's threads.

    Each thread prepares a contiguous share of the batch straight into its rows of one array (no stacking
    copy, one task per thread rather than one per image). A row whose input failed is left unset and its
    exception reported instead: one bad input never sinks its batch.

    overlap=True prepares batch k+1 while the consumer runs batch k (an engine on another device, or one that
    leaves cores idle). overlap=False prepares a batch only after the previous one was consumed: a CPU engine
    that runs every core in lock-step loses more to threads that preempt it than overlap would win (measured
    by `edgeft bench --input frames`); the consumer, which would only wait, then prepares the first share
    itself (one thread hand-off fewer per batch). Items are pulled lazily, so memory stays bounded and endless
    feeds work. dtype: of the batch array (float32 tensors, or uint8 images for an image-input engine).
    """
    it = enumerate(items)

    def submit() -> tuple[list[tuple[int, Any]], np.ndarray, list[Future]]:
        chunk = list(itertools.islice(it, batch_size))
        out = np.empty((len(chunk), *shape), dtype)

        def fill(rows: range) -> dict[int, BaseException]:
            failed: dict[int, BaseException] = {}
            for j in rows:
                i, item = chunk[j]
                try:
                    row = out[j]
                    res = prepare(item, i, row)  # written straight into its row
                    if res is not row:
                        row[...] = res
                except Exception as exc:
                    failed[j] = exc
            return failed

        step = -(-len(chunk) // max(1, shares)) if chunk else 1
        parts = [range(a, min(a + step, len(chunk))) for a in range(0, len(chunk), step)]
        futures = [pool.submit(fill, rows) for rows in parts[1:]]
        if parts and not overlap:  # the consumer would only wait: it prepares the first share itself
            done: Future = Future()
            done.set_result(fill(parts[0]))
            futures.insert(0, done)
        elif parts:
            futures.insert(0, pool.submit(fill, parts[0]))
        return chunk, out, futures

    pending = submit()
    while pending[0]:
        chunk, out, futures = pending
        if overlap:
            pending = submit()
        failed: dict[int, BaseException] = {}
        for fut in futures:
            failed.update(fut.result())
        yield chunk, out, failed
        if not overlap:
            pending = submit()


UNKNOWN = "unknown"


class Predictor:
    """Classify images with a bundle: `Predictor(bundle_dir).predict(["a.jpg", ...])`.

    The engine is opened with `edgeft.engines.select.open_bundle` (sha256-verified; `auto` picks the fastest
    artifact whose gate passed). `Predictor.from_engine` wraps an engine opened elsewhere (bench, tests).
    Probabilities are softmax(logits / T) with the temperature calibrated at training (bundle.json); a top-1
    probability below the unknown-species threshold (bundle.json, or `unknown_below`; 0 turns it off) is
    answered as label `unknown`, with the top-k still listed.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        backend: str = "auto",
        precision: str = "fp32",
        *,
        batch_size: int = 8,
        topk: int = 5,
        workers: int | None = None,
        verify: bool = True,
        fast_preprocess: bool = False,
        unknown_below: float | None = None,
        **engine_options: Any,
    ) -> None:
        _check_sizes(batch_size, topk, workers)
        bundle = BundleManifest.load(bundle_dir)
        engine = open_bundle(
            bundle_dir,
            backend,
            precision,
            batch_size=batch_size,
            verify=verify,
            image_input=fast_preprocess,  # part of the fast path: OpenVINO normalises in its graph
            **engine_options,
        )
        self._setup(engine, bundle, Path(bundle_dir), batch_size, topk, workers, unknown_below, fast_preprocess)

    @classmethod
    def from_options(cls, bundle_dir: str | Path, options: PredictOptions, **engine_options: Any) -> Predictor:
        """Open a bundle with the CLI's PredictOptions."""
        return cls(
            bundle_dir,
            options.backend,
            options.precision,
            batch_size=options.batch_size,
            topk=options.topk,
            workers=options.workers,
            verify=options.verify,
            fast_preprocess=options.fast_preprocess,
            unknown_below=options.unknown_below,
            **engine_options,
        )

    @classmethod
    def from_engine(
        cls,
        engine: EngineLike,
        bundle: BundleManifest | str | Path,
        *,
        batch_size: int = 8,
        topk: int = 5,
        workers: int | None = None,
        fast_preprocess: bool = False,
        unknown_below: float | None = None,
    ) -> Predictor:
        """Wrap a loaded engine (or anything with .infer); closing the Predictor closes it."""
        _check_sizes(batch_size, topk, workers)
        bundle_dir = None if isinstance(bundle, BundleManifest) else Path(bundle)
        manifest = bundle if isinstance(bundle, BundleManifest) else BundleManifest.load(bundle)
        self = cls.__new__(cls)
        self._setup(engine, manifest, bundle_dir, batch_size, topk, workers, unknown_below, fast_preprocess)
        return self

    def _setup(
        self,
        engine: EngineLike,
        bundle: BundleManifest,
        bundle_dir: Path | None,
        batch_size: int,
        topk: int,
        workers: int | None,
        unknown_below: float | None = None,
        fast_preprocess: bool = False,
    ) -> None:
        self.engine = engine
        self.fast_preprocess = fast_preprocess
        self.bundle = bundle
        self.overlap = not on_cpu(engine)
        self.bundle_dir = bundle_dir
        self.classes: list[str] = list(bundle.classes)
        self.spec: PreprocessSpec = bundle.preprocess
        # an image-input engine (`open_artifact(image_input=True)`) takes (S, S, 3) uint8 rows, not tensors
        self.takes_images = bool(getattr(engine, "takes_images", False))
        s = self.spec.input_size
        self.row_shape, self.row_dtype = ((s, s, 3), np.uint8) if self.takes_images else ((3, s, s), np.float32)
        self.temperature = bundle.calibration.temperature
        self.unknown_threshold = bundle.calibration.unknown_threshold if unknown_below is None else unknown_below
        self.batch_size = int(batch_size)
        self.topk = min(int(topk), len(self.classes))
        self.bundle_sha256 = sha256_file(bundle_dir / "bundle.json") if bundle_dir is not None else None
        self.workers = workers or decode_workers()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="edgeft-decode")
        self._gate_warning = self._find_gate_warning()
        if self._gate_warning and self._gate_warning not in _WARNED:  # once per process: bench opens many
            _WARNED.add(self._gate_warning)
            log.warning(self._gate_warning)

    # -- facts -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def precision(self) -> str | None:
        return getattr(self.engine, "precision", None)

    def describe(self) -> str:
        """Which engine and artifact actually run, e.g. 'openvino:CPU int8 (openvino-int8)'."""
        describe = getattr(self.engine, "describe", None)
        text = describe() if callable(describe) else type(self.engine).__name__
        warning = self.gate_warning()
        return f"{text} [WARNING: {warning}]" if warning else text

    def gate_warning(self) -> str | None:
        """Set when the artifact that runs did not pass the gate (a user named it explicitly)."""
        return self._gate_warning

    def _find_gate_warning(self) -> str | None:
        artifact = getattr(self.engine, "artifact", None)
        gate = getattr(artifact, "gate", None)
        warnings = []
        if gate is not None and not gate.passed:
            why = "; ".join(gate.reasons) or gate.verdict
            warnings.append(f"artifact {artifact.name} FAILED its gate ({why})")
        if self.fast_preprocess and artifact is not None:
            warnings += self._fast_preprocess_warning(artifact.name)
        if not warnings:
            return None
        return "; ".join(warnings) + ": its answers may differ from the PyTorch model"

    def _fast_preprocess_warning(self, artifact: str) -> list[str]:
        """--fast-preprocess is not bit-exact: say so unless `edgeft parity --fast-preprocess` passed this
        artifact (parity.fast.json in the bundle dir)."""
        path = self.bundle_dir / parity_file(fast=True) if self.bundle_dir is not None else None
        if path is None or not path.is_file():
            return ["--fast-preprocess was never checked on this bundle (run `edgeft parity --fast-preprocess`)"]
        try:
            report = ParityReport.load(path)
        except EdgeftError as exc:
            return [f"--fast-preprocess: {path} is unreadable ({exc.message})"]
        if report.preprocess != "fast" or report.bundle_sha256 != self.bundle_sha256:
            return [f"--fast-preprocess: {path} was not written by `edgeft parity --fast-preprocess` for this bundle"]
        if report.checks:
            return [f"--fast-preprocess: parity found the bundle itself wrong ({'; '.join(report.checks)})"]
        results = [b for b in report.backends.values() if b.artifact == artifact]
        if not results:
            return [f"--fast-preprocess was not checked on artifact {artifact} ({path})"]
        failed = [r for b in results if not b.gate.passed for r in b.gate.reasons or [b.gate.verdict]]
        return [f"--fast-preprocess FAILED parity on {artifact} ({'; '.join(failed)})"] if failed else []

    # -- the steps -------------------------------------------------------------------------------
    def prepare(self, item: Item, source: str | None = None) -> np.ndarray:
        """Decode and preprocess one input to a row of the engine's input (raises ImageDecodeError): (3, S, S)
        float32, or (S, S, 3) uint8 for an image-input engine (`row_shape`, `row_dtype`)."""
        return prepare_item(item, self.spec, source, fast=self.fast_preprocess, raw=self.takes_images)

    def tensor(self, row: np.ndarray) -> np.ndarray:
        """A prepared row as the (3, S, S) float32 model input (what a reference engine takes)."""
        return normalize(row, self.spec) if self.takes_images else row

    def submit_prepare(self, item: Item, source: str | None = None, max_pixels: int | None = None) -> Future:
        """`prepare` on the decode pool (the HTTP app decodes a request's images in parallel)."""
        return self._pool.submit(
            prepare_item, item, self.spec, source, max_pixels, self.fast_preprocess, raw=self.takes_images
        )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, *row_shape) prepared rows -> (N, classes) float32 logits, batch_size rows per engine call."""
        if batch.ndim == 4 and batch.shape[0] > self.batch_size:
            step = self.batch_size
            return np.concatenate([self.engine.infer(batch[i : i + step]) for i in range(0, batch.shape[0], step)])
        return np.asarray(self.engine.infer(batch), np.float32)

    def predictions(self, sources: Sequence[str], logits: np.ndarray, with_logits: bool = True) -> list[Prediction]:
        """Logits rows -> Predictions: softmax (calibrated temperature) and deterministic top-k."""
        logits = np.asarray(logits, np.float32).reshape(len(sources), -1)
        probs = softmax(logits, self.temperature)
        order = topk_indices(probs, self.topk)
        out = []
        for source, row, p, idx in zip(sources, logits, probs, order, strict=True):
            top = [Label(label=self.classes[i], prob=float(p[i])) for i in idx]
            best = int(idx[0])
            unknown = bool(self.unknown_threshold) and top[0].prob < self.unknown_threshold
            out.append(
                Prediction(
                    source=source,
                    label=UNKNOWN if unknown else top[0].label,
                    index=best,
                    unknown=unknown,
                    prob=top[0].prob,
                    topk=top,
                    logits=row.tolist() if with_logits else None,
                )
            )
        return out

    # -- whole inputs ----------------------------------------------------------------------------
    def predict(self, items: Item | Sequence[Item]) -> list[Prediction]:
        """Predict every input, in order; undecodable inputs get a Prediction with `error` set."""
        if isinstance(items, np.ndarray) and items.ndim == 4:  # a stack of images or tensors
            items = list(items)
        elif isinstance(items, (str, Path, bytes, np.ndarray, Image.Image)):
            items = [items]
        return list(self.predict_iter(items))

    def predict_iter(self, items: Iterable[Item]) -> Iterator[Prediction]:
        """Predictions for a (possibly endless) iterable; decoding batch k+1 overlaps inference of batch k."""

        def prepare(item: Item, i: int, row: np.ndarray) -> np.ndarray:
            source = item_source(item, i)
            return prepare_item(item, self.spec, source, fast=self.fast_preprocess, out=row, raw=self.takes_images)

        for chunk, batch, failed in _pipelined(
            items, prepare, self.batch_size, self._pool, self.row_shape, self.workers, self.overlap, self.row_dtype
        ):
            good = [j for j in range(len(chunk)) if j not in failed]
            sources = [item_source(item, i) for i, item in chunk]
            rows: dict[int, Prediction] = {}
            if good:
                logits = self.infer(batch if len(good) == len(chunk) else batch[good])
                rows = dict(zip(good, self.predictions([sources[j] for j in good], logits), strict=True))
            for j, source in enumerate(sources):
                yield rows[j] if j in rows else failed_prediction(source, failed[j])

    def batcher(
        self,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        infer: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> DynamicBatcher:
        """A DynamicBatcher feeding this predictor's engine (submit `prepare`d tensors)."""
        return DynamicBatcher(
            infer or self.infer,
            max_batch=self.batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            item_shape=self.row_shape,
            item_dtype=np.dtype(self.row_dtype).name,
        )

    def close(self) -> None:
        """Stop the decode threads and release the engine."""
        self._pool.shutdown(wait=True)
        self.engine.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_sizes(batch_size: int, topk: int, workers: int | None) -> None:
    for name, value in (("batch_size", batch_size), ("topk", topk), ("workers", 1 if workers is None else workers)):
        if value < 1:
            raise EdgeftError(f"{name} must be >= 1, got {value}", fix=f"e.g. --{name.replace('_', '-')} 8")
