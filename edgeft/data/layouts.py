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

from edgeft.core.errors import EdgeftError, ImageDecodeError
from edgeft.core.hashing import sha256_bytes
from edgeft.core.preprocess import load_image
from edgeft.data.dedup import describe
from edgeft.data.grouping import GROUPINGS, class_groups, group_report, single_track_groups
from edgeft.data.tracks import TrackKeys, detect_track_keys, regex_keys

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
    group_source: str = "content"
    group_report: dict = field(default_factory=dict)
    conflicts: list[dict] = field(default_factory=list)  # identical bytes under two classes: kept out

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
    """Open the image once: validate, hash the bytes, describe it for transform-verified grouping."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return path, None, f"unreadable: {exc.strerror}"
    try:
        img = load_image(data, name=str(path))
    except ImageDecodeError as exc:
        return path, None, f"{exc.reason}: {exc.message}"
    return path, (sha256_bytes(data), describe(img) if descriptors else None, img.size), None


def load_dataset(
    root: str | Path,
    species: Sequence[str] | None = None,
    group_regex: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 2,
    grouping: str = "auto",
) -> Dataset:
    """Find, validate and group every image of a dataset tree. Bad files are skipped and reported.

    grouping: "auto" (track keys from file names or `group_regex`, plus verified transforms), "content"
    (verified transforms only), "tracks" (file-name keys only) or "none" (every image its own group).
    Byte-identical images always share a group; identical images under two classes are kept out.
    """
    if grouping not in GROUPINGS:
        raise EdgeftError(f"unknown grouping {grouping!r}", fix=f"use one of {', '.join(GROUPINGS)}")
    layout, root = detect_layout(Path(root).expanduser().resolve())
    cands, classes = _select(layout, root, species)
    pattern = _compile(group_regex)
    records: list[Record] = []
    skipped: list[dict] = []
    descs: dict[str, object] = {}
    describe_images = grouping in ("auto", "content")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        scan = [(c[0], describe_images) for c in cands]
        for i, (path, result, error) in enumerate(pool.map(lambda a: _scan_one(*a), scan)):
            _, label, split = cands[i]
            rel = path.relative_to(root).as_posix()
            if error:
                skipped.append({"path": rel, "class": label, "reason": error})
            else:
                sha, desc, (w, h) = result
                records.append(Record(rel, label, sha, given_split=split, width=w, height=h))
                descs[rel] = desc
            if progress:
                progress(i + 1, len(cands))
    records, conflicts = _drop_cross_class_copies(records)
    _require_images(root, classes, records, skipped, conflicts)
    ds = Dataset(root, layout, classes, records, skipped, grouping, conflicts=conflicts)
    _assign_groups(ds, descs if describe_images else None, pattern, grouping)
    return ds


def _compile(group_regex: str | None) -> re.Pattern | None:
    if not group_regex:
        return None
    try:
        return re.compile(group_regex)
    except re.error as exc:
        raise EdgeftError(
            f"--group-regex {group_regex!r} is not a valid regular expression ({exc})",
            fix="e.g. --group-regex '(.*_fish[0-9]+)_frame'",
        ) from None


def _select(layout: str, root: Path, species: Sequence[str] | None) -> tuple[list, list[str]]:
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
        available = [s for s in available if s in keep]
    if not available:
        raise EdgeftError("no classes found", path=root, fix=LAYOUT_HELP)
    return cands, available


def _require_images(
    root: Path, classes: list[str], records: list[Record], skipped: list[dict], conflicts: list[dict] | None = None
) -> None:
    """Every class needs a valid image; a class without one is named with its bad files and their reasons."""
    have = {r.label for r in records}
    empty = [c for c in classes if c not in have]
    if not empty:
        return
    bad = [f"{s['path']} ({s['reason']})" for s in skipped if s["class"] in empty]
    bad += [
        f"{c['paths'][c['classes'].index(e)]} (same bytes as another class)"
        for c in conflicts or []
        for e in empty
        if e in c["classes"]
    ]
    shown = "; ".join(bad[:8]) + (f"; +{len(bad) - 8} more" if len(bad) > 8 else "")
    raise EdgeftError(
        f"class(es) {empty} have no valid images" + (f": {shown}" if bad else " (the folder is empty)"),
        path=root,
        fix=f"replace the bad files or drop the class; {LAYOUT_HELP}",
    )


def _drop_cross_class_copies(records: list[Record]) -> tuple[list[Record], list[dict]]:
    """Identical bytes labelled with two classes: a label error, reported with both paths and kept out."""
    by_sha: dict[str, list[Record]] = {}
    for r in records:
        by_sha.setdefault(r.sha256, []).append(r)
    conflicts = []
    for sha, recs in by_sha.items():
        labels = sorted({r.label for r in recs})
        if len(labels) > 1:
            recs = sorted(recs, key=lambda r: (r.label, r.path))
            conflicts.append({"sha256": sha, "classes": [r.label for r in recs], "paths": [r.path for r in recs]})
    bad = {c["sha256"] for c in conflicts}
    return [r for r in records if r.sha256 not in bad], conflicts


def _class_dirs(layout: str, root: Path) -> set[str]:
    if layout == "fish":
        return {d.name for d in root.iterdir() if _is_dir(d)}
    if layout == "folder":
        return {d.name for d in root.iterdir() if _is_dir(d)}
    return {d.name for s in root.iterdir() if _is_dir(s) for d in s.iterdir() if _is_dir(d)}


def _assign_groups(ds: Dataset, descs: dict | None, pattern: re.Pattern | None, grouping: str) -> None:
    """Group per class (see edgeft.data.grouping) and record how, in ds.group_source and ds.group_report."""
    by_class: dict[str, list[str]] = {}
    for r in ds.records:
        by_class.setdefault(r.label, []).append(r.path)
    if grouping == "none":
        for r in ds.records:
            r.group = r.path
        ds.group_report = group_report(
            {r.path: r.path for r in ds.records}, {r.path: r.label for r in ds.records}, "none", "grouping off"
        )
        return
    tracks: TrackKeys | None = None
    if grouping in ("auto", "tracks"):
        tracks = regex_keys(by_class, pattern) if pattern else detect_track_keys(by_class)
    shas = {r.path: r.sha256 for r in ds.records}
    groups: dict[str, str] = {}
    cross = 0
    for paths in by_class.values():
        g, n = class_groups(paths, shas, descs, tracks)
        groups.update(g)
        cross += n
    for r in ds.records:
        r.group = groups[r.path]  # the group's first path: unique across classes
    parts = []
    if tracks is not None and tracks.rule:
        parts.append(f"tracks:{tracks.rule}")
    if descs is not None:
        parts.append("verified-transforms")
    ds.group_source = "+".join(parts) or "identical-bytes"
    note = tracks.note if tracks is not None else "file-name keys off"
    if cross:
        note += f"; {cross} image(s) verified as transforms of another track's image (reported, not merged)"
    labels = {r.path: r.label for r in ds.records}
    expected = single_track_groups(groups, tracks)
    ds.group_report = group_report(groups, labels, ds.group_source, note, cross, expected)
