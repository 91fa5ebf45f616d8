"""RUN / BUNDLE / nothing: what a command works on, and the error when nothing exists yet."""

from __future__ import annotations

import json
import os

import pytest

from edgeft.core.errors import EdgeftError
from edgeft.core.locate import latest_run, locate


def _run(root, task, name, mtime):
    d = root / task / name
    d.mkdir(parents=True)
    (d / "model.json").write_text("{}")
    os.utime(d / "model.json", (mtime, mtime))
    return d


def test_latest_complete_run_wins(tmp_path):
    _run(tmp_path, "fish", "exp", 100)
    newest = _run(tmp_path, "folder", "b", 300)
    _run(tmp_path, "fish", "exp2", 200)
    (tmp_path / "fish" / "half").mkdir()  # no model.json: not a run
    assert latest_run(tmp_path) == newest


def test_run_without_bundle_says_to_export_first(tmp_path):
    run = _run(tmp_path, "fish", "exp", 100)
    with pytest.raises(EdgeftError, match="has not been exported yet") as info:
        locate(run, need_bundle=True)
    assert f"edgeft export {run}" in str(info.value)
    assert locate(run, need_bundle=False).run_dir == run


def test_bundle_points_back_at_its_run(tmp_path):
    run = _run(tmp_path, "fish", "exp", 100)
    (run / "bundle").mkdir()
    (run / "bundle" / "bundle.json").write_text(json.dumps({"source": {"run_dir": str(run)}}))
    where = locate(run / "bundle", need_bundle=True)
    assert (where.run_dir, where.bundle_dir, where.chosen) == (run, run / "bundle", False)
    assert locate(run, need_bundle=True).bundle_dir == run / "bundle"


def test_nothing_here_names_the_command_to_run_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EdgeftError, match="train one first with `edgeft train fish`"):
        locate(None, need_bundle=True)
    with pytest.raises(EdgeftError, match="neither a run dir"):
        locate(tmp_path, need_bundle=False)
