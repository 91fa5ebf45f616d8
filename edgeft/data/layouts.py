"""Dataset layouts, one-pass image validation, and near-duplicate groups.

Layouts:
- fish:     Fish_Dataset/<Species>/<Species>/*.png (masks in "<Species> GT" and NA_Fish_Dataset ignored);
            the root may be Fish_Dataset itself or the folder above it.
- presplit: train/, val|valid|validation/, test/, each class-per-folder (Keras flow_from_directory).
- folder:   class-per-folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.core.errors import EdgeftError, ImageDecodeError
from edgeft.core.hashing import sha256_bytes
from edgeft.core.preprocess import load_image
from edgeft.data.dedup import dihedral_hashes, disc_hashes, near_duplicate_groups

LAYOUT_HELP = (
    "expected one of: Fish_Dataset/<Species>/<Species>/*.png (the Large-Scale Fish Dataset), "
    "<root>/<class>/*.png (class per folder), or <root>/{train,val,test}/<class>/*.png (pre-split)"
)
VAL_NAMES = ("val", "valid", "validation")
IGNORED_DIRS = {"NA_Fish_Dataset", "__MACOSX"}


@dataclass
class Record:
    """One valid image: path relative to the dataset root (POSIX), label, and what the scan learnt."""

    path: str
    label: str
    sha256: str
    group: str = ""
    given_split: str | None = None
    width: int = 0
    height: int = 0


@dataclass
class Dataset:
    root: Path
    layout: str
    classes: list[str]
    records: list[Record]
    skipped: list[dict] = field(default_factory=list)
    group_source: str = "perceptual-hash"

    def abspath(self, rec: Record) -> Path:
        return self.root / rec.path

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.classes, 0)
        for r in self.records:
            out[r.label] += 1
        return out


def _is_dir(p: Path) -> bool:
    return p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_DIRS


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


def detect_layout(root: Path) -> tuple[str, Path]:
    """Return (layout, effective root)."""
    if not root.exists():
        raise EdgeftError("dataset root does not exist", path=root, fix=LAYOUT_HELP)
    if not root.is_dir():
        raise EdgeftError("dataset root is not a directory", path=root, fix=LAYOUT_HELP)
    if (root / "Fish_Dataset").is_dir():
        root = root / "Fish_Dataset"
        if (root / "Fish_Dataset").is_dir():  # the Kaggle archive nests it twice
            root = root / "Fish_Dataset"
    subdirs = [d for d in sorted(root.iterdir()) if _is_dir(d)]
    names = {d.name.lower() for d in subdirs}
    if "train" in names and (names & {"test", *VAL_NAMES}):
        return "presplit", root
    if subdirs and any((d / d.name).is_dir() for d in subdirs):
        return "fish", root
    if subdirs:
        return "folder", root
    raise EdgeftError("dataset root has no class folders", path=root, fix=LAYOUT_HELP)


def _candidates(layout: str, root: Path) -> list[tuple[Path, str, str | None]]:
    """(file, class, given split) for every file that should be an image."""
    out: list[tuple[Path, str, str | None]] = []
    if layout == "fish":
        for d in sorted(root.iterdir()):
            if not _is_dir(d):
                continue
            inner = d / d.name
            if not inner.is_dir():
                raise EdgeftError(
                    f"species folder {d.name!r} has no inner {d.name!r} image folder", path=d, fix=LAYOUT_HELP
                )
            out += [(f, d.name, None) for f in _files(inner)]
    elif layout == "folder":
        for d in sorted(root.iterdir()):
            if _is_dir(d):
                out += [(f, d.name, None) for f in _files(d)]
    else:
        for split_dir in sorted(root.iterdir()):
            if not _is_dir(split_dir):
                continue
            name = split_dir.name.lower()
            split = "val" if name in VAL_NAMES else name
            if split not in ("train", "val", "test"):
                continue
            for d in sorted(split_dir.iterdir()):
                if _is_dir(d):
                    out += [(f, d.name, split) for f in _files(d)]
    return out


def _scan_one(path: Path, descriptors: bool = True):
    """Open the image once: validate, hash the bytes, compute the near-duplicate descriptors."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return path, None, f"unreadable: {exc.strerror}"
    try:
        img = load_image(data, name=str(path))
    except ImageDecodeError as exc:
        return path, None, f"{exc.reason}: {exc.message}"
    if not descriptors:
        return path, (sha256_bytes(data), None, None, img.size), None
    return path, (sha256_bytes(data), dihedral_hashes(img), disc_hashes(img), img.size), None


def load_dataset(
    root: str | Path,
    species: Sequence[str] | None = None,
    group_regex: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 2,
    grouping: str = "auto",
) -> Dataset:
    """Find, validate and group every image of a dataset tree. Bad files are skipped and reported.

    grouping: "auto" (near-duplicates, or group_regex when given) or "none" (every image its own group).
    """
    layout, root = detect_layout(Path(root).expanduser().resolve())
    cands = _candidates(layout, root)
    available = sorted({c for _, c, _ in cands} | _class_dirs(layout, root))
    if species:
        unknown = [s for s in species if s not in available]
        if unknown:
            raise EdgeftError(
                f"unknown species {unknown}; available: {available}",
                path=root,
                fix='pass --species with names from the list, e.g. --species "' + ",".join(available[:2]) + '"',
            )
        keep = set(species)
        cands = [c for c in cands if c[1] in keep]
        classes = [s for s in available if s in keep]
    else:
        classes = available
    if not classes:
        raise EdgeftError("no classes found", path=root, fix=LAYOUT_HELP)
    pattern = re.compile(group_regex) if group_regex else None

    records: list[Record] = []
    skipped: list[dict] = []
    feats: dict[str, tuple] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        describe = grouping != "none" and pattern is None
        scan = [(c[0], describe) for c in cands]
        for i, (path, result, error) in enumerate(pool.map(lambda a: _scan_one(*a), scan)):
            _, label, split = cands[i]
            rel = path.relative_to(root).as_posix()
            if error:
                skipped.append({"path": rel, "class": label, "reason": error})
            else:
                sha, ph, ring, (w, h) = result
                records.append(Record(rel, label, sha, given_split=split, width=w, height=h))
                feats[rel] = (ph, ring)
            if progress:
                progress(i + 1, len(cands))

    counts = {c: 0 for c in classes}
    for r in records:
        counts[r.label] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise EdgeftError(
            f"class(es) {empty} have no valid images", path=root, fix=f"add images or drop the class; {LAYOUT_HELP}"
        )
    if grouping == "none":
        for r in records:
            r.group = f"{r.label}/{r.path}"
        return Dataset(root, layout, classes, records, skipped, "none")
    _assign_groups(records, feats, pattern)
    return Dataset(root, layout, classes, records, skipped, "regex" if pattern else "perceptual-hash")


def _class_dirs(layout: str, root: Path) -> set[str]:
    if layout == "fish":
        return {d.name for d in root.iterdir() if _is_dir(d)}
    if layout == "folder":
        return {d.name for d in root.iterdir() if _is_dir(d)}
    return {d.name for s in root.iterdir() if _is_dir(s) for d in s.iterdir() if _is_dir(d)}


def _assign_groups(records: list[Record], feats: dict[str, tuple], pattern: re.Pattern | None) -> None:
    """Group per class: by the regex's first capture group, or by near-duplicate components."""
    by_class: dict[str, list[Record]] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    for label, recs in by_class.items():
        if pattern is not None:
            for r in recs:
                m = pattern.search(Path(r.path).name)
                key = (m.group(1) if m.groups() else m.group(0)) if m else Path(r.path).stem
                r.group = f"{label}/{key}"
            continue
        ph = np.stack([feats[r.path][0] for r in recs])
        discs = np.stack([feats[r.path][1] for r in recs])
        comp = near_duplicate_groups(ph, discs)
        for r, c in zip(recs, comp, strict=True):
            r.group = f"{label}/{recs[c].path.rsplit('/', 1)[-1]}"
