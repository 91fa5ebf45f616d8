"""Which run dir or bundle dir a command works on: an explicit path, or the most recent one under runs/.

`edgeft export`, `parity`, `bench`, `eval` and `serve` accept a RUN dir, a BUNDLE dir or nothing; they all
resolve it here, and the CLI says which one was chosen. When nothing exists, the error names the command
to run first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeft.core.errors import EdgeftError

RUNS_ROOT = Path("runs")
BUNDLE_SUBDIR = "bundle"


@dataclass(frozen=True)
class Located:
    """The dirs a command will use; `chosen` is True when it was picked automatically (say so)."""

    run_dir: Path | None
    bundle_dir: Path | None
    chosen: bool = False

    def describe(self) -> str:
        return str(self.bundle_dir or self.run_dir)


def is_run_dir(path: Path) -> bool:
    return (path / "model.json").is_file()


def is_bundle_dir(path: Path) -> bool:
    return (path / "bundle.json").is_file()


def latest_run(root: Path = RUNS_ROOT) -> Path | None:
    """The complete run (model.json present) under root/<task>/<name>/ written most recently."""
    if not root.is_dir():
        return None
    runs = [m.parent for m in root.glob("*/*/model.json") if m.is_file()]
    return max(runs, key=lambda r: ((r / "model.json").stat().st_mtime, str(r)), default=None)


def _same_dir(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except OSError:
        return False


def bundle_of_run(run_dir: Path) -> Path | None:
    """The bundle exported from a run: RUN/bundle, else the newest bundle.json whose source.run_dir is the run.

    Searched: RUN/*/, RUN/../*/, RUN/../../bundles/*/ and ./bundles/*/.
    """
    direct = run_dir / BUNDLE_SUBDIR
    if is_bundle_dir(direct):
        return direct
    seen: dict[Path, float] = {}
    for root in (run_dir, run_dir.parent, run_dir.parent.parent / "bundles", Path.cwd() / "bundles"):
        if not root.is_dir():
            continue
        for manifest in root.glob("*/bundle.json"):
            try:
                source = json.loads(manifest.read_text()).get("source", {})
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(source, dict) and source.get("run_dir") and _same_dir(source["run_dir"], run_dir):
                seen[manifest.parent.resolve()] = manifest.stat().st_mtime
    return max(seen, key=lambda p: (seen[p], str(p))) if seen else None


def run_of_bundle(bundle_dir: Path) -> Path | None:
    """The run dir recorded in bundle.json (source.run_dir), when it still exists on this machine."""
    try:
        source = json.loads((bundle_dir / "bundle.json").read_text()).get("source", {})
    except (OSError, ValueError, AttributeError):
        return None
    run = source.get("run_dir") if isinstance(source, dict) else None
    if not run:
        return None
    path = Path(run) if Path(run).is_absolute() else (bundle_dir / run).resolve()
    return path if is_run_dir(path) else None


def _nothing_here(root: Path) -> EdgeftError:
    return EdgeftError(
        f"no run found under {root}/ (looked for {root}/<task>/<name>/model.json)",
        path=Path.cwd(),
        fix="train one first with `edgeft train fish`, or pass the run/bundle dir explicitly",
    )


def locate(target: str | Path | None, *, need_bundle: bool, root: Path = RUNS_ROOT) -> Located:
    """Resolve a RUN dir, a BUNDLE dir or nothing (the latest run) to the dirs a command needs."""
    chosen = target is None
    if target is None:
        run = latest_run(root)
        if run is None:
            raise _nothing_here(root)
        path = run
    else:
        path = Path(target).expanduser()
        if not path.exists():
            raise EdgeftError(
                "no such directory",
                path=path,
                fix="pass a run dir (from `edgeft train`) or a bundle dir (from `edgeft export`)",
            )
    if is_bundle_dir(path):
        return Located(run_of_bundle(path), path, chosen)
    if not is_run_dir(path):
        raise EdgeftError(
            "neither a run dir (model.json) nor a bundle dir (bundle.json)",
            path=path,
            fix="pass the output of `edgeft train` or of `edgeft export` (a half-written run has no model.json)",
        )
    bundle = bundle_of_run(path)
    if need_bundle and bundle is None:
        raise EdgeftError(
            "this run has not been exported yet (no bundle found in RUN/bundle or next to it)",
            path=path,
            fix=f"run `edgeft export {path}` first",
        )
    return Located(path, bundle, chosen)
