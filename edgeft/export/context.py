"""What every export step shares: the loaded run, the judging data, the options and the artifacts built so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.check.gate import Gate
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import Artifact, GateRecord, ModelManifest, SplitsDoc
from edgeft.core.preprocess import PreprocessSpec
from edgeft.core.progress import Reporter, or_silent
from edgeft.data.evalsets import EvalSet, from_splits
from edgeft.export.calibration import Calibration, prepare


@dataclass(frozen=True)
class ExportOptions:
    """What `edgeft export` was asked to build (the keyword arguments of `build_bundle`)."""

    int8: bool = True
    fp16: bool = True
    formats: tuple[str, ...] | None = None
    calib_size: int = 300
    calib_method: str = "minmax"
    max_drop: float = 1.0
    accuracy_control: bool = False
    force: bool = False
    min_agreement: float = 0.99
    min_n: int | None = None  # None: derived from min_agreement by the gate
    int8_search: bool = True  # keep the most damaging convs float until val+calib agreement reaches the target


@dataclass
class Built:
    """An artifact written into the work dir, before the gate decides whether it ships."""

    name: str
    format: str
    precision: str
    path: str  # relative to the bundle dir
    extra_files: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def files(self) -> list[str]:
        return [self.path, *self.extra_files]

    def sha256(self, root: Path, f: str) -> str:
        """sha256 of one of its files, hashed once: the artifact cache key and bundle.json use the same digest
        (the files are final once built)."""
        if f not in self.digests:
            self.digests[f] = sha256_file(root / f)
        return self.digests[f]

    def size_bytes(self, root: Path) -> int:
        return sum((root / f).stat().st_size for f in self.files() if (root / f).is_file())

    def to_artifact(self, root: Path, gate: GateRecord | None) -> Artifact:
        return Artifact(
            name=self.name,
            format=self.format,
            precision=self.precision,
            path=self.path,
            sha256=self.sha256(root, self.path),
            bytes=self.size_bytes(root),
            extra_files={f: self.sha256(root, f) for f in self.extra_files},
            info=self.info,
            gate=gate,
        )


@dataclass
class Judging:
    """The images every artifact is judged on, preprocessed once, and the torch FP32 reference logits."""

    split: str
    evalset: EvalSet  # the images that decoded
    x: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    gate: Gate
    images: list[str]  # content hashes of evalset's images, in order (cache keys)

    @property
    def sources(self) -> list[str]:
        return [str(p) for p in self.evalset.paths]


@dataclass
class ExportContext:
    run_dir: Path
    work: Path
    manifest: ModelManifest
    model: Any  # the eval-mode torch Classifier
    weights_sha256: str
    splits: SplitsDoc
    options: ExportOptions
    judging: Judging
    reporter: Reporter | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    built: list[Built] = field(default_factory=list)
    calibration: Calibration | None = None
    val: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    accepted: list[Built] = field(default_factory=list)  # set after judging; packaging formats use these
    packages: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"triton": [model names]}
    searches: list[Any] = field(default_factory=list)  # quant.search.SearchResult per searched INT8 artifact

    @property
    def rep(self) -> Reporter:
        return or_silent(self.reporter)

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.preprocess

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def step(self, name: str, total: int | None = None) -> None:
        self.rep.task(name, total)

    def note(self, line: str) -> None:
        """A one-line message the user should see (skipped formats, small calib sets); kept for the report."""
        self.notes.append(line)
        self.rep.note(line)

    def add(self, built: Built) -> Built:
        self.built = [b for b in self.built if b.name != built.name] + [built]
        return built

    def get(self, name: str) -> Built | None:
        return next((b for b in self.built if b.name == name), None)

    def calibration_data(self) -> Calibration:
        """The calibration set, prepared once (selection, preprocessing, cache key, calibration.json)."""
        if self.calibration is None:
            o = self.options
            cal = prepare(
                self.splits, self.classes, self.spec, self.weights_sha256, o.calib_size, o.calib_method, self.reporter
            )
            cal.doc.write(self.work / "calibration.json")
            for line in cal.doc.notes:
                self.note(f"calibration: {line}")
            self.calibration = cal
        return self.calibration

    @property
    def head_saw_val(self) -> bool:
        """True when the head was refitted on train+val: val images are then its own training images, on which
        it is confident, so they cannot show what INT8 costs."""
        return bool(self.manifest.hyperparameters.get("refit", False))

    def val_set(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Held-out (x, label indices) for NNCF accuracy control, loaded once: the val split, or the calib
        images when the head was refitted on train+val (its own training images would hide any drop)."""
        if self.val is None:
            if self.head_saw_val:
                cal = self.calibration_data()
                index = {c: i for i, c in enumerate(self.classes)}
                self.val = (cal.tensors, np.array([index[im.label] for im in cal.doc.images], np.int64))
                return self.val
            evalset = from_splits(self.splits, "val", self.classes)
            if not len(evalset):
                return None
            x, kept = evalset.load(self.spec)
            self.val = (x, kept.label_indices(self.classes))
        return self.val
