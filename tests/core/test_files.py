"""Atomic writes and staged directories: an interrupted command never damages what existed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from edgeft.core.files import clean_stale_partials, staged_dir, write_json_atomic


def _mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_and_dirs_are_shareable(tmp_path):
    f = write_json_atomic(tmp_path / "a" / "doc.json", {"x": 1})
    assert f.read_text() == '{\n  "x": 1\n}\n' and _mode(f) == 0o644
    with staged_dir(tmp_path / "out") as work:
        (work / "m.txt").write_text("new")
    assert _mode(tmp_path / "out") == 0o755 and (tmp_path / "out" / "m.txt").read_text() == "new"


def test_failure_inside_staged_dir_leaves_the_old_dir_byte_identical(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "keep.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), staged_dir(target) as work:
        (work / "keep.bin").write_bytes(b"new")
        raise RuntimeError("boom")
    assert (target / "keep.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no partial left behind


def test_success_replaces_the_old_dir_whole(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    with staged_dir(target) as work:
        (work / "fresh.bin").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_killed_writers_partial_dir_is_cleaned_but_a_live_ones_is_not(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".bundle.partial-{dead.stdout.strip()}-abc"
    live = tmp_path / f".bundle.partial-{os.getpid()}-xyz"
    stale.mkdir()
    live.mkdir()
    removed = clean_stale_partials(tmp_path / "bundle")
    assert removed == [stale] and not stale.exists() and live.exists()


def test_a_killed_writers_partial_file_is_cleaned_too_and_a_symlink_only_unlinked(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    stale = tmp_path / f".out.mp4.partial-{pid}-.mp4"
    stale.write_bytes(b"half a video")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data.bin").write_bytes(b"x")
    link = tmp_path / f".out.mp4.partial-{pid}-link"
    link.symlink_to(keep, target_is_directory=True)
    live = tmp_path / f".out.mp4.partial-{os.getpid()}-.mp4"
    live.write_bytes(b"being written")
    removed = clean_stale_partials(tmp_path / "out.mp4")
    assert sorted(removed) == sorted([stale, link]) and not stale.exists() and not link.exists()
    assert live.exists() and (keep / "data.bin").read_bytes() == b"x", "a link is removed, never what it points to"
