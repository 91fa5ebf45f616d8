"""An existing run survives a refused, a killed and a failed re-train byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgeft
from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import ModelManifest
from edgeft.train.run import TrainConfig, train

pytestmark = pytest.mark.slow


def _snapshot(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): sha256_file(p) for p in sorted(run.rglob("*")) if p.is_file()}


def _args(data: Path, out: Path) -> list[str]:
    return ["train", "folder", "--data", str(data), "--backbone", "tinynet", "--out", str(out), "--name", "tiny"]


def test_killed_retrain_leaves_the_previous_run_byte_identical(tiny_run, colour_tree, copy_dir, tmp_path):
    out = tmp_path / "runs"
    run = out / "folder" / "tiny"
    run.parent.mkdir(parents=True)
    run = copy_dir(tiny_run, "runs/folder/tiny")
    before = _snapshot(run)
    env = {**os.environ, "PYTHONPATH": str(Path(edgeft.__file__).parents[1])}
    cmd = [sys.executable, "-m", "edgeft.cli", *_args(colour_tree, out), "--overwrite", "--epochs", "400"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # the scan is done and training has begun: kill it mid-way
        if "groups:" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(run) == before
    assert ModelManifest.load(run).name == "tiny"


def test_failed_retrain_while_writing_leaves_no_partial_and_the_old_run(
    tiny_run, colour_tree, copy_dir, tmp_path, monkeypatch
):
    from edgeft.train import run as run_mod

    out = tmp_path / "runs"
    (out / "folder").mkdir(parents=True)
    run = copy_dir(tiny_run, "runs/folder/tiny")
    before = _snapshot(run)

    def interrupted(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C halfway through writing the new run dir

    monkeypatch.setattr(run_mod, "plot_confusion", interrupted)
    cfg = run_mod.TrainConfig(
        task="folder", data=colour_tree, backbone="tinynet", epochs=2, out=out, name="tiny", overwrite=True
    )
    with pytest.raises(KeyboardInterrupt):
        run_mod.train(cfg)
    assert _snapshot(run) == before
    # the staged sibling was removed; the checkpoint of the interrupted training stays for --resume
    assert sorted(p.name for p in run.parent.iterdir()) == [".tiny.resume", "tiny"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("head", "svm"),
        ("crop", "zoom"),
        ("resampler", "simd"),
        ("augment", "rot90"),
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", -1.0),
        ("dropout", 1.5),
        ("weight_decay", -1.0),
        ("patience", -1),
        ("hidden", (0,)),
        ("device", "foo"),
        ("name", "a/b"),
        ("name", "../escape"),
        ("name", "/tmp/abs"),
        ("name", ".."),
        ("name", ""),
    ],
)
def test_the_library_refuses_options_no_training_can_use(option, value):
    """TrainConfig checks its own values: code that builds one without the CLI gets the same clear error."""
    with pytest.raises(EdgeftError, match=f"--{option.replace('_', '-')}"):
        TrainConfig(**{option: value})


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_overwrite_replaces_runs_only(kind, colour_tree, tmp_path):
    taken = tmp_path / "runs" / "folder" / "mine"
    taken.parent.mkdir(parents=True)
    if kind == "folder":
        taken.mkdir()
        (taken / "precious.txt").write_text("mine")
    else:
        taken.write_text("mine")
    before = _snapshot(taken.parent)
    cfg = TrainConfig(
        task="folder",
        data=colour_tree,
        backbone="tinynet",
        epochs=1,
        out=tmp_path / "runs",
        name="mine",
        overwrite=True,
    )
    with pytest.raises(EdgeftError, match="not an edgeft run") as err:
        train(cfg)
    assert err.value.path == str(taken) and _snapshot(taken.parent) == before
    assert sorted(p.name for p in taken.parent.iterdir()) == ["mine"]  # no checkpoint, no partial run


def test_runs_folder_that_is_a_file_is_refused(colour_tree, tmp_path):
    out = tmp_path / "afile.txt"
    out.write_text("mine")
    with pytest.raises(EdgeftError, match="runs folder is a file"):
        train(TrainConfig(task="folder", data=colour_tree, backbone="tinynet", epochs=1, out=out))
    assert out.read_text() == "mine"
