"""Labelled images to evaluate on: one split of a run's splits.json, or a dataset tree.

The one EvalSet used by `edgeft eval`, export's acceptance gate, parity and bench. `load` decodes and
preprocesses every image once (in parallel) with THE preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import SplitsDoc
from edgeft.core.preprocess import PreprocessSpec, preprocess_many


@dataclass
class EvalSet:
    """Image files with labels (None = unlabelled); `origin` says where the list came from."""

    paths: list[Path]
    labels: list[str | None]
    origin: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    shas: list[str] | None = None  # content sha256 of each image, in order, once `load` has read them

    def __len__(self) -> int:
        return len(self.paths)

    def label_indices(self, classes: Sequence[str]) -> np.ndarray:
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index.get(lab, -1) if lab is not None else -1 for lab in self.labels], np.int64)

    def spread(self, n: int) -> EvalSet:
        """At most n images, evenly spaced through the (path-sorted, so class-grouped) list: every class keeps
        its share. Deterministic."""
        if len(self) <= n:
            return self
        idx = np.linspace(0, len(self) - 1, n).round().astype(int)
        return EvalSet([self.paths[i] for i in idx], [self.labels[i] for i in idx], self.origin, list(self.skipped))

    def load(
        self,
        spec: PreprocessSpec,
        advance: Callable[[int], None] | None = None,
        fast: bool = False,
        raw: bool = False,
    ) -> tuple[np.ndarray, EvalSet]:
        """(N_ok, 3, S, S) tensors and the EvalSet of the images that decoded; failures go to `skipped`.
        fast: serving's --fast-preprocess instead of THE preprocessing. raw: (N_ok, S, S, 3) uint8 images before
        normalisation (`core.preprocess.finish`). The kept set carries the content hash of every image (`shas`),
        taken from the bytes that were decoded: the cache keys need no second read."""
        digests = [""] * len(self.paths)
        x, ok, failed = preprocess_many(self.paths, spec, advance=advance, fast=fast, digests=digests, raw=raw)
        kept = EvalSet([self.paths[i] for i in ok], [self.labels[i] for i in ok], self.origin, list(self.skipped))
        kept.shas = [digests[i] for i in ok]
        kept.skipped += [{"source": str(self.paths[i]), "error": f"{e.reason}: {e.message}"} for i, e in failed]
        return x, kept


def from_splits(splits: SplitsDoc, split: str, classes: Sequence[str], origin: str = "") -> EvalSet:
    """The images of one split (sorted by path), labels checked against `classes`."""
    items = splits.of(split)
    unknown = sorted({it.label for it in items} - set(classes))
    if unknown:
        raise EdgeftError(
            f"splits.json labels {unknown} are not among the model's classes {list(classes)}",
            path=origin or None,
            fix="the run and the bundle come from different trainings; pass the matching run or bundle",
        )
    return EvalSet([splits.abspath(it) for it in items], [it.label for it in items], origin or f"{split} split")


def run_split(run_dir: Path, classes: Sequence[str], split: str = "test") -> EvalSet:
    """One split of a run dir's splits.json; a clear error when the run has none of it."""
    splits = SplitsDoc.load(run_dir)
    es = from_splits(splits, split, classes, f"{split} split of {run_dir / 'splits.json'}")
    if not len(es):
        raise EdgeftError(
            f"splits.json has no {split!r} images",
            path=run_dir / "splits.json",
            fix="pass --data DIR with an image tree",
        )
    missing = [str(p) for p in es.paths if not p.is_file()]
    if missing:
        raise EdgeftError(
            f"{len(missing)} image(s) of the {split} split are missing, e.g. {missing[0]}",
            path=run_dir / "splits.json",
            fix="restore the dataset at the path recorded in splits.json (its 'root'), or pass --data",
        )
    return es


def from_tree(data: Path, classes: Sequence[str]) -> EvalSet:
    """Images of a dataset tree (any supported layout; a pre-split tree contributes its test split)."""
    from edgeft.data.layouts import load_dataset

    data = Path(data).expanduser()
    if not data.is_dir():
        raise EdgeftError("--data is not a directory", path=data, fix="pass a class-per-folder image tree")
    ds = load_dataset(data, grouping="none")
    records = ds.records
    if any(r.given_split for r in records):
        records = [r for r in records if r.given_split == "test"]
    unknown = sorted({r.label for r in records} - set(classes))
    if unknown:
        raise EdgeftError(
            f"class folder(s) {unknown} are not classes of the model {list(classes)}",
            path=data,
            fix="rename the folders to the model's class names or remove them",
        )
    if not records:
        raise EdgeftError("no images found", path=data, fix="pass a class-per-folder image tree")
    skipped = [{"source": str(ds.root / s["path"]), "error": s["reason"]} for s in ds.skipped]
    return EvalSet([ds.abspath(r) for r in records], [r.label for r in records], f"image tree {data}", skipped)


def eval_set(run_dir: Path | None, data: Path | None, classes: Sequence[str], split: str = "test") -> EvalSet:
    """--data if given, else the run's test split."""
    if data is not None:
        return from_tree(data, classes)
    if run_dir is None or not (run_dir / "splits.json").is_file():
        raise EdgeftError(
            "no test images: the bundle's run dir (bundle.json source.run_dir) is not on this machine",
            path=run_dir,
            fix="pass --data DIR with a class-per-folder image tree",
        )
    return run_split(run_dir, classes, split)
