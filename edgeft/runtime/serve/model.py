"""The serving view of a model: the few things the stream loop, HTTP app and parity monitor need.

Serving talks to `ServeModel`, not to Predictor directly, so tests and benchmarks can wrap the real
backend (a slow one, a mismatched one) without touching the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeft.manifest import BundleManifest, PreprocessSpec, sha256_file
from edgeft.runtime.preprocess import preprocess

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class ServeModel:
    """A loaded classifier: name, classes, preprocessing spec and a batch -> logits function."""

    name: str
    classes: list[str]
    spec: PreprocessSpec
    infer: InferFn
    backend: str = "custom"
    precision: str | None = None
    bundle_dir: Path | None = None
    bundle_sha256: str | None = None
    closer: Callable[[], None] | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.closer is not None:
            closer, self.closer = self.closer, None
            closer()

    def with_infer(self, infer: InferFn, backend: str | None = None) -> ServeModel:
        """A copy that runs another infer function (tests: slow or mismatched models); it does not own the model."""
        return ServeModel(
            self.name,
            self.classes,
            self.spec,
            infer,
            backend or self.backend,
            self.precision,
            self.bundle_dir,
            self.bundle_sha256,
        )

    def __enter__(self) -> ServeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bundle_sha256(bundle_dir: str | Path) -> str:
    """sha256 of bundle.json: identifies exactly which bundle a server runs (artifact hashes are inside it)."""
    return sha256_file(Path(bundle_dir) / "bundle.json")


def from_predictor(predictor: Any, bundle_dir: str | Path | None = None) -> ServeModel:
    """Adapt an edgeft.runtime.Predictor (duck-typed: bundle, classes, spec, backend, predict_tensor, close)."""
    bundle: BundleManifest = predictor.bundle
    bdir = bundle_dir if bundle_dir is not None else getattr(predictor, "bundle_dir", None)
    backend = predictor.backend
    describe = backend.describe() if hasattr(backend, "describe") else str(backend)
    precision = getattr(getattr(backend, "artifact", None), "precision", None) or getattr(predictor, "precision", None)
    return ServeModel(
        name=bundle.name,
        classes=list(predictor.classes),
        spec=predictor.spec,
        infer=predictor.predict_tensor,
        backend=describe,
        precision=precision,
        bundle_dir=Path(bdir) if bdir is not None else None,
        bundle_sha256=bundle_sha256(bdir) if bdir is not None else None,
        closer=predictor.close,
    )


def from_backend(backend: Any, bundle_dir: str | Path) -> ServeModel:
    """Adapt a loaded edgeft.runtime.backends.Backend (no Predictor needed)."""
    bundle = BundleManifest.load(bundle_dir)
    return ServeModel(
        name=bundle.name,
        classes=list(bundle.classes),
        spec=bundle.preprocess_spec,
        infer=backend.infer,
        backend=backend.describe(),
        precision=backend.artifact.precision,
        bundle_dir=Path(bundle_dir),
        bundle_sha256=bundle_sha256(bundle_dir),
        closer=backend.close,
    )


def open_model(
    bundle_dir: str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    batch_size: int = 8,
    topk: int = 5,
    verify: bool = True,
    **backend_options: Any,
) -> ServeModel:
    """Load a bundle through the runtime's Predictor (sha256-verified, backend picked as `edgeft predict` does).

    backend_options go to the engine (threads=, hint= for OpenVINO), e.g. hint="LATENCY" for a live stream.
    """
    from edgeft.runtime.predictor import Predictor

    predictor = Predictor(
        bundle_dir,
        backend=backend,
        precision=precision,
        batch_size=batch_size,
        topk=topk,
        verify=verify,
        **backend_options,
    )
    return from_predictor(predictor, bundle_dir)


def to_tensor(rgb: np.ndarray | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 HWC array (or PIL image) -> (3, S, S) float32 with the bundle's preprocessing."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    return preprocess(img, spec)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk_rows(logits: np.ndarray, classes: list[str], k: int) -> list[dict]:
    """Per row: top-1 label/index/prob and the top-k list [{label, prob}] (probabilities from a softmax)."""
    probs = softmax(logits)
    k = max(1, min(k, probs.shape[-1]))
    rows = []
    for p in probs:
        order = np.argsort(-p, kind="stable")[:k]
        top = [{"label": classes[i], "prob": round(float(p[i]), 6)} for i in order]
        rows.append({"label": top[0]["label"], "index": int(order[0]), "prob": top[0]["prob"], "topk": top})
    return rows
