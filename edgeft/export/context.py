"""What every export step shares: the loaded run, the evaluation data, options, and the artifacts built so far."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.manifest import Artifact, ModelManifest, PreprocessSpec, sha256_file


@dataclass
class ExportOptions:
    int8: bool = True
    fp16: bool = True
    calib_size: int = 300
    calib_method: str = "minmax"
    max_drop: float = 1.0
    accuracy_control: bool = False


@dataclass
class Built:
    """An artifact written into the work dir, before evaluation decides whether it ships."""

    name: str
    format: str
    precision: str
    path: str  # relative to the bundle dir
    extra_files: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def files(self) -> list[str]:
        return [self.path, *self.extra_files]

    def size_bytes(self, root: Path) -> int:
        return sum((root / f).stat().st_size for f in self.files() if (root / f).is_file())

    def to_artifact(self, root: Path) -> Artifact:
        return Artifact(
            name=self.name,
            format=self.format,
            precision=self.precision,
            path=self.path,
            sha256=sha256_file(root / self.path),
            bytes=self.size_bytes(root),
            extra_files={f: sha256_file(root / f) for f in self.extra_files},
            info=self.info,
        )


@dataclass
class EvalSet:
    """Preprocessed images of one split, their labels, and the torch FP32 reference logits."""

    split: str
    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    reference: np.ndarray | None = None


@dataclass
class ExportContext:
    run_dir: Path
    work: Path
    manifest: ModelManifest
    model: Any  # the eval-mode torch Classifier
    weights_sha256: str
    splits: dict
    options: ExportOptions
    test: EvalSet
    step: Callable[[str], None]
    metadata: dict[str, str] = field(default_factory=dict)
    built: list[Built] = field(default_factory=list)
    calibration: Any = None  # edgeft.calibration.Calibration, once prepared
    val: EvalSet | None = None
    notes: list[str] = field(default_factory=list)
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    accepted: list[Built] = field(default_factory=list)  # set after evaluation; packaging formats use these
    packages: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"triton": [model names]}

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.preprocess_spec

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def add(self, built: Built) -> Built:
        self.built = [b for b in self.built if b.name != built.name] + [built]
        return built

    def get(self, name: str) -> Built | None:
        return next((b for b in self.built if b.name == name), None)

    def calibration_data(self):
        """The calibration set, prepared once (selection, preprocessing, cache key, calibration.json)."""
        if self.calibration is None:
            from edgeft.calibration import prepare

            self.step("INT8: calibration set")
            self.calibration = prepare(
                self.splits,
                self.classes,
                self.spec,
                self.weights_sha256,
                self.options.calib_size,
                self.options.calib_method,
                self.work / "calibration.json",
            )
            for line in self.calibration.set.notes:
                self.note(f"calibration: {line}")
        return self.calibration

    def val_set(self) -> EvalSet | None:
        """The val split (for NNCF accuracy control), loaded on first use; None when the run has no val images."""
        if self.val is None:
            val = load_eval_set(self.splits, "val", self.classes, self.spec)
            self.val = val if len(val.y) else None
        return self.val

    def note(self, line: str) -> None:
        """A one-line message the user should see (skipped formats, small calib sets)."""
        self.notes.append(line)


def load_eval_set(splits: dict, split: str, classes: list[str], spec: PreprocessSpec) -> EvalSet:
    """All images of one split of splits.json, sorted by path, preprocessed with the shared implementation."""
    from edgeft.calibration.dataset import ImageItem, load_tensors

    items = sorted(
        (
            ImageItem(it["path"], it["label"], str(it.get("sha256") or ""))
            for it in splits["items"]
            if it["split"] == split
        ),
        key=lambda it: it.path,
    )
    x, _ = load_tensors(Path(splits["root"]), items, spec, what=split)
    y = np.array([classes.index(it.label) for it in items], np.int64)
    return EvalSet(split, x, y, [it.path for it in items])
