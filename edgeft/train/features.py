"""Feature cache: embeddings of a frozen backbone, computed once per image and reused every epoch.

The cache key is (backbone weights sha256, preprocessing spec, architecture, format version); each entry is
named by the image's content sha256, so a changed image, backbone or preprocessing is never served stale.
On CPU the backbone runs through THE exporter (checked against torch on export) and the ONNX Runtime engine,
with decoding and preprocessing of the next batch overlapping inference of the current one.

In a multi-process training (`extract(shard=)`, edgeft.train.distributed) the images missing from the
cache of any rank are dealt out over the ranks, every rank receives every feature, and only the ranks
with `writes_cache` (one per machine) write the cache.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from edgeft.core.errors import EdgeftError
from edgeft.core.files import cache_root, write_bytes_atomic
from edgeft.core.hashing import stable_hash
from edgeft.core.preprocess import PreprocessSpec, preprocess_many

FEATURE_VERSION = 1
VIEWS = ("base", "hflip")  # cached views: the image as given, and mirrored left-right after preprocessing
TORCH_MATCH_ATOL = 1e-3  # features feed a head trained on them; 1e-3 is far below what moves a prediction


class Shard(Protocol):
    """This process's part of a multi-process feature pass (edgeft.train.distributed.Dist)."""

    rank: int
    world: int

    @property
    def writes_cache(self) -> bool: ...

    def agree(self, fn: Callable[[], Any]) -> list[Any]: ...


def feature_cache_key(weights_sha256: str, spec: PreprocessSpec, arch: str) -> str:
    return stable_hash({"weights": weights_sha256, "preprocess": spec.to_dict(), "arch": arch, "v": FEATURE_VERSION})


def _onnx_engine(module: nn.Module, spec: PreprocessSpec, path: Path, threads: int | None = None):
    """The backbone as ONNX on ONNX Runtime, exported once per cache key and checked against torch on a probe."""
    from edgeft.check.comparator import require_close
    from edgeft.engines.onnxruntime import OnnxRuntimeEngine
    from edgeft.models.onnx import export_onnx

    fresh = not path.is_file()
    if fresh:
        export_onnx(module, spec.input_size, path, output_name="features")
    size = spec.input_size
    engine = OnnxRuntimeEngine(path, input_shape=(3, size, size), output_name="features", threads=threads).load()
    if fresh:
        probe = np.random.default_rng(0).standard_normal((2, 3, spec.input_size, spec.input_size)).astype(np.float32)
        with torch.inference_mode():
            want = module(torch.from_numpy(probe)).float().numpy()
        try:
            require_close(want, engine.run(probe), TORCH_MATCH_ATOL, "the backbone's ONNX export", path)
        except EdgeftError:
            engine.close()
            path.unlink(missing_ok=True)  # never reuse an export that did not match
            raise
    return engine


class FeatureExtractor:
    """Embeds images with a frozen backbone, through the on-disk cache."""

    def __init__(
        self,
        module: nn.Module,
        spec: PreprocessSpec,
        weights_sha256: str,
        arch: str,
        device: str = "cpu",
        engine: str = "auto",
        batch_size: int = 32,
        cache_dir: Path | None = None,
        threads: int | None = None,
    ):
        self.module = module.eval()
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.key = feature_cache_key(weights_sha256, spec, arch)
        self.dir = (cache_dir or cache_root() / "features") / self.key
        self.engine_name = "torch"
        self._engine: Callable[[np.ndarray], np.ndarray] = self._torch
        if engine in ("auto", "onnxruntime") and device == "cpu":
            try:
                self._engine = _onnx_engine(module, spec, self.dir / "backbone.onnx", threads).infer
                self.engine_name = "onnxruntime"
            except EdgeftError:  # an export the exporter could not verify: the torch engine is always correct
                if engine == "onnxruntime":
                    raise

    @torch.inference_mode()
    def _torch(self, batch: np.ndarray) -> np.ndarray:
        return self.module.to(self.device)(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def _entry(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def _prepare(self, paths: Sequence[Path], view: str = "base") -> np.ndarray:
        x, ok, failed = preprocess_many(paths, self.spec, workers=1)
        if failed:
            i, err = failed[0]
            raise EdgeftError(f"cannot read an image that was valid at scan time ({err.message})", path=paths[i])
        return np.ascontiguousarray(x[..., ::-1]) if view == "hflip" else x

    def extract(
        self,
        paths: Sequence[Path],
        shas: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
        view: str = "base",
        shard: Shard | None = None,
    ) -> np.ndarray:
        """(N, D) float32 features of one view, computing only the images missing from the cache.

        Entries are keyed by content sha256 and, for a view other than the image itself, the view's name.
        With `shard` (every rank passes the same paths and shas), the images missing on any rank are shared
        out, computed once, and gathered on every rank.
        """
        if view not in VIEWS:
            raise EdgeftError(f"unknown feature view {view!r}", fix=f"use one of {VIEWS}")
        shas = [s if view == "base" else f"{s}-{view}" for s in shas]
        feats: dict[str, np.ndarray] = {}
        first: dict[str, int] = {}  # uncached content hash -> first index (duplicates embedded once)
        for i, sha in enumerate(shas):
            if sha in feats or sha in first:
                continue
            cached = self._load(sha)
            if cached is None:
                first[sha] = i
            else:
                feats[sha] = cached
        todo = list(first.values())
        if progress:
            progress(len(shas) - len(todo), len(shas))
        if shard is None or shard.world <= 1:
            self._compute(paths, shas, todo, view, feats, store=True, progress=progress)
        else:
            missing = sorted(set().union(*shard.agree(lambda: todo)))  # missing on some rank
            mine = missing[shard.rank :: shard.world]
            computed: dict[str, np.ndarray] = {}
            parts = shard.agree(lambda: self._compute(paths, shas, mine, view, computed, store=False))
            for part in parts:
                feats.update(part)  # every rank takes the computed rows, also for entries it had cached
            if shard.writes_cache:
                for i in todo:
                    self._store(shas[i], feats[shas[i]])
            if progress:
                progress(len(shas), len(shas))
        return np.stack([feats[s] for s in shas]) if shas else np.zeros((0, 0), np.float32)

    def _compute(
        self,
        paths: Sequence[Path],
        shas: Sequence[str],
        todo: list[int],
        view: str,
        feats: dict[str, np.ndarray],
        store: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Embed the images at indices `todo` into feats[sha] (and the cache when `store`); returns feats."""
        done = len(shas) - len(todo)
        batches = deque(todo[k : k + self.batch_size] for k in range(0, len(todo), self.batch_size))
        workers = max(1, min(2, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def submit(b: list[int]):
                return b, pool.submit(self._prepare, [paths[i] for i in b], view)

            ahead = deque(submit(batches.popleft()) for _ in range(min(workers, len(batches))))  # bounded prefetch
            while ahead:
                b, fut = ahead.popleft()
                if batches:
                    ahead.append(submit(batches.popleft()))
                out = self._engine(fut.result())
                for i, row in zip(b, out, strict=True):
                    feats[shas[i]] = row.astype(np.float32)
                    if store:
                        self._store(shas[i], feats[shas[i]])
                done += len(b)
                if progress:
                    progress(done, len(shas))
        return feats

    def _load(self, sha: str) -> np.ndarray | None:
        f = self._entry(sha)
        if not f.is_file():
            return None
        try:
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            f.unlink(missing_ok=True)  # a torn write is recomputed, never trusted
            return None

    def _store(self, sha: str, row: np.ndarray) -> None:
        import io

        buf = io.BytesIO()
        np.save(buf, row, allow_pickle=False)
        write_bytes_atomic(self._entry(sha), buf.getvalue(), durable=False)
