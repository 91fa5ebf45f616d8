"""Feature cache: embeddings of a frozen backbone, computed once per image and reused every epoch.

The cache key is (backbone weights sha256, preprocessing spec, engine version); each entry is named by the
image's content sha256. A changed image, backbone or preprocessing can therefore never be served stale.
The feature pass runs on ONNX Runtime (checked against torch on real images before use), with image
decoding and preprocessing in a thread pool overlapping inference.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeft.manifest import PreprocessSpec, stable_hash
from edgeft.runtime.preprocess import preprocess_path

FEATURE_VERSION = 1
TORCH_MATCH_ATOL = 1e-3


def cache_root() -> Path:
    return Path(os.environ.get("EDGEFT_CACHE", Path.home() / ".cache" / "edgeft"))


def feature_cache_key(weights_sha256: str, spec: PreprocessSpec, arch: str) -> str:
    return stable_hash({"weights": weights_sha256, "preprocess": spec.to_dict(), "arch": arch, "v": FEATURE_VERSION})


class _OrtEngine:
    """The frozen backbone exported to ONNX and run by ONNX Runtime: the fastest CPU engine measured here."""

    def __init__(self, module: nn.Module, spec: PreprocessSpec, path: Path):
        import onnxruntime as ort

        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
            os.close(fd)
            dummy = torch.zeros(1, 3, spec.input_size, spec.input_size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (dummy,),
                    tmp,
                    dynamo=False,
                    opset_version=17,
                    input_names=["input"],
                    output_names=["features"],
                    dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                )
            os.replace(tmp, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, torch.get_num_threads())
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": batch})[0]


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
                ort_engine = _OrtEngine(module, spec, self.dir / "backbone.onnx")
                probe = (
                    np.random.default_rng(0)
                    .standard_normal((2, 3, spec.input_size, spec.input_size))
                    .astype(np.float32)
                )
                if np.abs(ort_engine(probe) - self._torch(probe)).max() <= TORCH_MATCH_ATOL:
                    self._engine, self.engine_name = ort_engine, "onnxruntime"
            except Exception:  # any export/runtime problem: the torch engine is always correct
                if engine == "onnxruntime":
                    raise

    @torch.inference_mode()
    def _torch(self, batch: np.ndarray) -> np.ndarray:
        return self.module.to(self.device)(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def _entry(self, sha: str) -> Path:
        return self.dir / sha[:2] / f"{sha}.npy"

    def extract(
        self, paths: Sequence[Path], shas: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """(N, D) float32 features, computing only the images missing from the cache."""
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
        done = len(shas) - len(todo)
        if progress:
            progress(done, len(shas))
        batches = deque(todo[k : k + self.batch_size] for k in range(0, len(todo), self.batch_size))
        with ThreadPoolExecutor(max_workers=2) as pool:

            def load(b: list[int]):
                return b, pool.submit(lambda: np.stack([preprocess_path(paths[i], self.spec) for i in b]))

            ahead = deque(load(batches.popleft()) for _ in range(min(2, len(batches))))  # bounded prefetch
            while ahead:
                b, fut = ahead.popleft()
                if batches:
                    ahead.append(load(batches.popleft()))
                out = self._engine(fut.result())
                for i, row in zip(b, out, strict=True):
                    feats[shas[i]] = row.astype(np.float32)
                    self._store(shas[i], feats[shas[i]])
                done += len(b)
                if progress:
                    progress(done, len(shas))
        return np.stack([feats[s] for s in shas]) if shas else np.zeros((0, 0), np.float32)

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
        f = self._entry(sha)
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npy", dir=f.parent)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, row, allow_pickle=False)
        os.replace(tmp, f)
