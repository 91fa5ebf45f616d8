"""File writes that never leave half a file or half a directory, and the cache location.

Every JSON document, weights file and model artifact goes through `write_bytes_atomic` (temp file in the
same directory, fsync, rename). Whole directories (a run dir, a bundle) are built by `staged_dir` in a
hidden sibling and swapped in only when complete, so an interrupted command never damages what existed.
Files are written 0644 and directories 0755: runs and bundles are meant to be shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgeft.core.errors import EdgeftError

FILE_MODE = 0o644
DIR_MODE = 0o755
PARTIAL_TAG = ".partial-"


def cache_root() -> Path:
    """~/.cache/edgeft, or $EDGEFT_CACHE: features, calibration ranges, synthetic data, reference and artifact logits."""
    return Path(os.environ.get("EDGEFT_CACHE", Path.home() / ".cache" / "edgeft"))


def check_out_dir(path: Path, option: str) -> None:
    """An output folder option must name a folder, or nothing yet (it is then created)."""
    if path.exists() and not path.is_dir():
        raise EdgeftError(
            f"{option} must name a folder, and this is a file",
            path=path,
            fix=f"pass a folder (or a new name) as {option}",
        )


def check_out_file(path: Path, option: str, earlier: Callable[[Path], bool]) -> None:
    """An output file option must name a new file, or one `earlier` recognises as this command's own output."""
    if path.is_dir():
        raise EdgeftError(f"{option} is a folder; it names a file", path=path, fix=f"pass a file name as {option}")
    if path.exists() and not earlier(path):
        raise EdgeftError(
            f"{option} would overwrite a file that edgeft did not write", path=path, fix="pick a new file name"
        )


def write_bytes_atomic(path: str | Path, data: bytes, mode: int = FILE_MODE, durable: bool = True) -> Path:
    """Write via a temp file in the same directory and rename: readers see the old file or the new one.

    durable=False skips the fsync (caches: a torn entry is recomputed, never trusted).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """JSON with a trailing newline; pydantic models are dumped in JSON mode."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temp path next to `path` for tools that write files themselves (safetensors, onnx); renamed on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file, or one clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise EdgeftError(f"{what} not found", path=path, fix=f"point at a directory that holds {path.name}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeftError(
            f"{what} is not valid JSON ({exc})", path=path, fix="re-create it with the edgeft command that wrote it"
        ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def partial_name(target: Path) -> str:
    return f".{target.name}{PARTIAL_TAG}{os.getpid()}-"


def clean_stale_partials(target: Path) -> list[Path]:
    """Remove hidden `.NAME.partial-PID-*` siblings (directories or files) left by a killed process (never a
    live one's)."""
    removed = []
    prefix = f".{target.name}{PARTIAL_TAG}"
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid_text = p.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _swap_in(work: Path, target: Path) -> None:
    """Replace target with work; the old target is removed only after the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(work, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Build a directory in a hidden sibling; on success it atomically becomes `target` (replacing it).

    Callers decide beforehand whether replacing an existing `target` is allowed; on any exception the
    partial directory is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(target)
    work = Path(tempfile.mkdtemp(prefix=partial_name(target), dir=target.parent))
    os.chmod(work, DIR_MODE)
    try:
        yield work
        _swap_in(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
