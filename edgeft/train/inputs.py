"""What a training starts from: the scanned and split dataset, each split's images, the backbone (new, or
an --init run's) and the run's preprocessing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.files import cache_root
from edgeft.core.manifests import SplitsDoc
from edgeft.core.preprocess import OPENCV_INTERPOLATIONS, PreprocessSpec
from edgeft.core.progress import Reporter
from edgeft.data.layouts import Dataset, load_dataset
from edgeft.data.splits import assign_splits, splits_doc
from edgeft.models.backbones import Backbone, create_backbone
from edgeft.models.classifier import load_run
from edgeft.train.config import TrainConfig


@dataclass
class Split:
    """One split's images: paths, label indices and content hashes, in a fixed order."""

    paths: list[Path]
    labels: np.ndarray
    shas: list[str]


def synthetic_fish(seed: int, per_class: int, rep: Reporter) -> Path:
    """Generate (once, cached) the embedded synthetic fish dataset in the Kaggle layout."""
    from edgeft.data.synth import generate_dataset

    target = cache_root() / "synth" / f"fish-s{seed}-n{per_class}"
    marker = target / ".complete"
    if not marker.is_file():
        rep.note(f"generating the SYNTHETIC fish dataset ({per_class} images/class, seed {seed}) in {target}")
        rep.task("synth", None)
        generate_dataset(target, per_class=per_class, seed=seed, progress=rep.update, owned=True)  # our cache
        marker.write_text("ok\n")
    return target


def split_of(ds: Dataset, assignment: dict[str, str], split: str) -> Split:
    index = {c: i for i, c in enumerate(ds.classes)}
    recs = sorted((r for r in ds.records if assignment[r.path] == split), key=lambda r: (r.label, r.path))
    return Split(
        [ds.abspath(r) for r in recs], np.array([index[r.label] for r in recs], np.int64), [r.sha256 for r in recs]
    )


def backbone_for(cfg: TrainConfig) -> tuple[Backbone, str | None]:
    if cfg.init is None:
        return create_backbone(cfg.backbone, cfg.backbone_weights), None
    prev, man = load_run(cfg.init)
    bb = Backbone(
        id=man.backbone.id,
        arch=man.backbone.arch,
        module=prev.backbone,
        feature_dim=man.backbone.feature_dim,
        preprocess=man.preprocess,
        source=f"run:{Path(cfg.init).resolve()}",
        blocks=[],
        pretrained=True,
    )
    return bb, str(Path(cfg.init).resolve())


def scan_and_split(cfg: TrainConfig, rep: Reporter) -> tuple[Dataset, SplitsDoc, bool]:
    synthetic = cfg.data is None
    if synthetic:
        if cfg.task != "fish":
            raise EdgeftError(
                "`edgeft train folder` needs --data DIR", fix="pass --data pointing at a class-per-folder tree"
            )
        rep.note("no --data given: training on the embedded SYNTHETIC fish dataset, not real photos")
        root = synthetic_fish(cfg.seed, cfg.synth_per_class, rep)
    else:
        root = Path(cfg.data)
    rep.task("scan (validate + hash + group)", None)
    ds = load_dataset(
        root,
        species=cfg.species,
        group_regex=cfg.group_regex,
        workers=cfg.workers,
        progress=rep.update,
        grouping=cfg.grouping,
    )
    if len(ds.classes) < 2:
        raise EdgeftError(
            f"only one class ({ds.classes[0]!r}) found: a classifier needs at least 2 classes",
            path=ds.root,
            fix="add a folder per class under the dataset root, or drop --species to use every class",
        )
    doc = splits_doc(ds, assign_splits(ds, cfg.seed, cfg.fractions), cfg.seed, cfg.fractions)
    for split in ("train", "test"):
        empty = [c for c, n in doc.counts[split].items() if n == 0]
        if empty:
            raise EdgeftError(
                f"split {split!r} has no images of {empty} (too few images or groups)",
                path=ds.root,
                fix="add more images per class, or lower the split fractions",
            )
    note_data(ds, doc, rep)
    return ds, doc, synthetic


def note_data(ds: Dataset, doc: SplitsDoc, rep: Reporter) -> None:
    """What the run output says about the data: groups, track keys, warnings, kept-out and bad files."""
    g = ds.group_report
    rep.note(f"groups: {g.get('groups')} ({g.get('source')}); {g.get('note')}")
    for w in g.get("warnings", [])[:5] + doc.report["split"]["warnings"][:5]:
        rep.note(f"warning: {w}")
    for c in ds.conflicts[:5]:
        rep.note(f"same image under two classes, kept out of every split: {' and '.join(c['paths'])}")
    if ds.skipped:
        rep.note(f"skipped {len(ds.skipped)} bad file(s); they are listed in skipped.json")


WIDE = 1.5  # median long/short side ratio above which `--crop auto` keeps the whole image (squash)


def with_preprocess(bb: Backbone, cfg: TrainConfig, ds: Dataset, rep: Reporter) -> Backbone:
    """The run's preprocessing: the backbone's own, with the crop rule and the resampler chosen here.

    Crop: the backbone's rule, or squash for wide images (video crops of a whole fish lose head and tail to a
    centre square). Resampler: "opencv" (bit-exact on every platform and several times cheaper than Pillow's
    filter, see core.preprocess) resizes bilinearly; "pil" keeps the backbone's torchvision numerics; "auto"
    (default) is opencv for a new run and the --init run's own for a transfer. Recorded in model.json.
    """
    crop = cfg.crop
    if crop == "auto":
        ratio = float(np.median([max(r.width, r.height) / max(1, min(r.width, r.height)) for r in ds.records]))
        crop = "squash" if ratio >= WIDE and cfg.init is None else bb.preprocess.crop
        if crop != bb.preprocess.crop:
            rep.note(f"images are wide (median side ratio {ratio:.2f}): preprocessing squashes instead of cropping")
    resampler = cfg.resampler
    if resampler == "auto":  # a transferred run keeps the numerics its backbone was tuned on
        resampler = bb.preprocess.resampler if cfg.init is not None else "opencv"
    update: dict = {"crop": crop, "resampler": resampler}
    if resampler == "opencv" and bb.preprocess.interpolation not in OPENCV_INTERPOLATIONS:
        update["interpolation"] = "bilinear"
    spec = PreprocessSpec(**{**bb.preprocess.model_dump(), **update})
    return bb if spec == bb.preprocess else dataclasses.replace(bb, preprocess=spec)
