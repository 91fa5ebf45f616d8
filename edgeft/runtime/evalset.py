"""Which images parity and bench run on, and finding a run's bundle: run dir or bundle dir in, files out."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.manifest import BundleManifest, PreprocessSpec, read_json
from edgeft.runtime.predictor import default_workers, describe_failure
from edgeft.runtime.preprocess import load_image, preprocess

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class EvalSet:
    """Labelled image files to evaluate on; `origin` says where the list came from."""

    paths: list[Path]
    labels: list[str | None]
    origin: str
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _same_dir(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except OSError:
        return False


def find_bundle_for_run(run_dir: Path) -> Path:
    """The bundle exported from a run: `<run>/bundle`, else the newest bundle.json whose source.run_dir is the run.

    Searched: <run>/*/, <run>/../*/, <run>/../../bundles/*/ and ./bundles/*/.
    """
    direct = run_dir / "bundle"
    if (direct / "bundle.json").is_file():
        return direct
    seen: dict[Path, float] = {}
    for pattern_root in (run_dir, run_dir.parent, run_dir.parent.parent / "bundles", Path.cwd() / "bundles"):
        if not pattern_root.is_dir():
            continue
        for manifest in pattern_root.glob("*/bundle.json"):
            try:
                source = json.loads(manifest.read_text()).get("source", {})
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(source, dict) and source.get("run_dir") and _same_dir(source["run_dir"], run_dir):
                seen[manifest.parent.resolve()] = manifest.stat().st_mtime
    if not seen:
        raise EdgeftError(
            "no bundle exported from this run was found (looked in <run>/bundle, <run>/*/, <run>/../*/, "
            "<run>/../../bundles/*/ and ./bundles/*/)",
            path=run_dir,
            fix="export one with `edgeft export RUN`, or pass the bundle dir instead of the run dir",
        )
    return max(seen, key=lambda p: (seen[p], str(p)))


def resolve_target(target: str | Path) -> tuple[Path, Path | None]:
    """(bundle dir, run dir or None) for a BUNDLE dir or a RUN dir."""
    target = Path(target).expanduser()
    if (target / "bundle.json").is_file():
        bundle = BundleManifest.load(target)
        run = bundle.source.get("run_dir")
        if run:
            run_path = Path(run) if Path(run).is_absolute() else (target / run).resolve()
            return target, (run_path if run_path.is_dir() else None)
        return target, None
    if (target / "model.json").is_file() or (target / "splits.json").is_file():
        return find_bundle_for_run(target), target
    raise EdgeftError(
        "neither a bundle dir (bundle.json) nor a run dir (model.json / splits.json)",
        path=target,
        fix="pass the output of `edgeft export` or of `edgeft train`",
    )


def from_splits(run_dir: Path, classes: Sequence[str], split: str = "test") -> EvalSet:
    """The run's `split` images from splits.json; relative paths are relative to its "root"."""
    path = run_dir / "splits.json"
    doc = read_json(path, "splits.json")
    items = doc.get("items")
    if not isinstance(items, list):
        raise EdgeftError("splits.json has no 'items' list", path=path, fix="re-run `edgeft train`")
    root = Path(doc.get("root") or run_dir)
    paths, labels = [], []
    for it in items:
        if it.get("split") != split:
            continue
        label = it.get("label")
        if label not in classes:
            raise EdgeftError(
                f"splits.json label {label!r} is not one of the bundle's classes {list(classes)}",
                path=path,
                fix="the bundle was exported from another run; pass the matching run or bundle",
            )
        p = Path(it["path"])
        paths.append(p if p.is_absolute() else root / p)
        labels.append(label)
    if not paths:
        raise EdgeftError(
            f"splits.json has no {split!r} images", path=path, fix="pass --data DIR with a class-per-folder tree"
        )
    return EvalSet(paths, labels, f"{split} split of {path}")


def from_tree(data: Path, classes: Sequence[str]) -> EvalSet:
    """Images of a dataset tree; class folder names must be bundle classes.

    Uses edgeft.data.layouts.load_dataset when present (Fish_Dataset, pre-split and class-per-folder layouts;
    a pre-split tree contributes its test split), else a plain class-per-folder scan.
    """
    data = Path(data).expanduser()
    if not data.is_dir():
        raise EdgeftError("--data is not a directory", path=data, fix="pass a class-per-folder image tree")
    try:
        from edgeft.data.layouts import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        ds = load_dataset(data)
        records = ds.records
        if any(r.given_split for r in records):
            records = [r for r in records if r.given_split == "test"]
        found = [(ds.abspath(r), r.label) for r in records]
        skipped = [{"source": str(ds.root / s["path"]), "error": s["reason"]} for s in ds.skipped]
    else:
        found, skipped = [], []
        for d in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append((f, d.name))
    unknown = sorted({label for _, label in found} - set(classes))
    if unknown:
        raise EdgeftError(
            f"class folder(s) {unknown} are not classes of the bundle {list(classes)}",
            path=data,
            fix="rename the folders to the bundle's class names or remove them",
        )
    if not found:
        raise EdgeftError("no images found", path=data, fix="pass a class-per-folder image tree")
    return EvalSet([p for p, _ in found], [lab for _, lab in found], f"image tree {data}", skipped)


def load_eval_set(run_dir: Path | None, data: Path | None, classes: Sequence[str]) -> EvalSet:
    """--data if given, else the run's test split."""
    if data is not None:
        return from_tree(data, classes)
    if run_dir is None or not (run_dir / "splits.json").is_file():
        raise EdgeftError(
            "no test images: the bundle's run dir (bundle.json source.run_dir) has no splits.json",
            path=run_dir,
            fix="pass --data DIR with a class-per-folder image tree",
        )
    return from_splits(run_dir, classes)


def preprocess_files(
    paths: Sequence[Path],
    spec: PreprocessSpec,
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[int], list[dict]]:
    """Decode + preprocess every file once, in parallel: (N_ok, 3, S, S) array, ok indices, failures."""

    def one(p: Path) -> np.ndarray | Exception:
        try:
            return preprocess(load_image(p), spec)
        except Exception as exc:
            return exc

    arrays, ok, failed = [], [], []
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for i, res in enumerate(pool.map(one, paths)):
            if isinstance(res, np.ndarray):
                arrays.append(res)
                ok.append(i)
            else:
                failed.append({"source": str(paths[i]), "error": describe_failure(res)})
            if advance:
                advance(1)
    s = spec.input_size
    x = np.stack(arrays) if arrays else np.zeros((0, 3, s, s), np.float32)
    return x, ok, failed
