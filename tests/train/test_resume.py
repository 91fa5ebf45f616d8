"""`edgeft train --resume`: a killed training continues from its checkpoint to the weights and metrics of an
uninterrupted run; changed options, a missing checkpoint and a forgotten --resume are refused; a complete
run of the same name survives killed --overwrite --resume attempts byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import edgeft
from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file

pytestmark = pytest.mark.slow

# Long enough that a kill lands inside a stage: each head fit takes about a second, fine-tuning too.
EPOCHS, FINETUNE = 40, 12
OPTS = ["--backbone", "tinynet", "--epochs", str(EPOCHS), "--patience", str(EPOCHS)]
FT_OPTS = ["--finetune-epochs", str(FINETUNE), "--finetune-blocks", "1"]


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    cli = [sys.executable, "-m", "edgeft.cli", "train", "folder", "--data", str(data), "--out", str(out)]
    return [*cli, "--name", "tiny", *OPTS, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(edgeft.__file__).parents[1])}


def _state(out: Path) -> dict:
    return json.loads((out / "folder" / ".tiny.resume" / "state.json").read_text())


def _kill_when(cmd: list[str], out: Path, ready: Callable[[dict], bool], log: Path) -> dict:
    """Run `cmd`; SIGKILL it as soon as its checkpoint satisfies `ready`; the checkpoint state after the kill."""
    state = out / "folder" / ".tiny.resume" / "state.json"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env())
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                doc = json.loads(state.read_text())
            except (OSError, ValueError):
                doc = None
            if doc is not None and ready(doc):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                assert proc.returncode == -signal.SIGKILL
                return _state(out)
            time.sleep(0.01)
        proc.kill()
    pytest.fail(f"the training ended (rc {proc.returncode}) before the awaited checkpoint:\n{log.read_text()}")


def _fits(doc: dict) -> list[str]:
    return [k for k in doc["entries"] if k.startswith("fit.")]


def _snapshot(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): sha256_file(p) for p in sorted(run.rglob("*")) if p.is_file()}


def test_killed_training_resumes_to_the_uninterrupted_result(colour_tree, tmp_path):
    from edgeft.train.run import TrainConfig, train

    out = tmp_path / "runs"
    cmd = _cmd(colour_tree, out, *FT_OPTS)
    # killed in the middle of a head fit ...
    first = _kill_when(cmd, out, lambda d: any(k.startswith("fit.head.") for k in d["entries"]), tmp_path / "1.log")
    assert _fits(first) and "head" not in first["entries"]
    assert not (out / "folder" / "tiny").exists()
    # ... resumed, and killed again in the middle of fine-tuning ...
    second = _kill_when([*cmd, "--resume"], out, lambda d: "fit.finetune" in d["entries"], tmp_path / "2.log")
    assert "head" in second["entries"] and _fits(second) == ["fit.finetune"]
    stopped_at = second["entries"]["fit.finetune"]["meta"]["epoch"]
    assert 1 <= stopped_at < FINETUNE
    # ... resumed to the end
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming from the checkpoint" in r.stderr
    run = out / "folder" / "tiny"
    assert sorted(p.name for p in run.parent.iterdir()) == ["tiny"]  # the checkpoint went with success

    ref = train(
        TrainConfig(
            task="folder",
            data=colour_tree,
            backbone="tinynet",
            epochs=EPOCHS,
            patience=EPOCHS,
            finetune_epochs=FINETUNE,
            finetune_blocks=1,
            out=tmp_path / "ref",
            name="tiny",
        )
    ).run_dir
    got, want = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert json.loads((run / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())
    model = json.loads((run / "model.json").read_text())
    stages = [(r["stage"], r["epoch"]) for r in model["resumed_from"]]
    assert stages[0][0] in ("head.linear", "head.mlp", "head.refit") and stages[0][1] >= 1
    assert stages[1] == ("finetune", stopped_at)
    assert model["hyperparameters"]["resume"] is True
    assert json.loads((ref / "model.json").read_text())["resumed_from"] == []


def _interrupted(colour_tree, out: Path, monkeypatch, **kw):
    """An in-process training interrupted (Ctrl-C) while writing its run dir: the checkpoint holds its stages."""
    from edgeft.train import run as run_mod

    cfg = run_mod.TrainConfig(task="folder", data=colour_tree, backbone="tinynet", epochs=3, out=out, name="tiny", **kw)

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(run_mod, "plot_confusion", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            run_mod.train(cfg)
    return cfg


def test_resume_refuses_changed_options_and_data_and_a_forgotten_flag(colour_tree, copy_dir, tmp_path, monkeypatch):
    from PIL import Image

    from edgeft.train.run import train

    tree = copy_dir(colour_tree, "tree")
    out = tmp_path / "runs"
    cfg = _interrupted(tree, out, monkeypatch)
    ck = out / "folder" / ".tiny.resume"
    state = (ck / "state.json").read_bytes()
    assert set(json.loads(state)["entries"]) == {"head"}  # the candidates and fits went with it
    assert not (out / "folder" / "tiny").exists()

    with pytest.raises(EdgeftError, match="left a checkpoint") as exc:
        train(cfg)  # neither --resume nor --overwrite: the checkpoint is not thrown away
    assert exc.value.path == str(ck) and "--resume" in exc.value.fix and "--overwrite" in exc.value.fix
    with pytest.raises(EdgeftError, match=r"--epochs 4 \(checkpoint: 3\)") as exc:
        train(replace(cfg, epochs=4, resume=True))
    assert "--lr" not in str(exc.value)
    with pytest.raises(EdgeftError, match=r"--hidden \[128\] \(checkpoint: \[256\]\); --lr 0\.01 \(checkpoint"):
        train(replace(cfg, lr=0.01, hidden=(128,), resume=True))
    from edgeft.core.progress import Reporter
    from edgeft.train.resume import Checkpoint

    with pytest.raises(EdgeftError, match=r"training processes \(torchrun --nproc_per_node\) 2 \(checkpoint: 1\)"):
        Checkpoint.open(out / "folder" / "tiny", {**cfg.record(), "processes": 2}, True, False, Reporter())
    assert (ck / "state.json").read_bytes() == state  # refusals leave the checkpoint as it was

    victim = next((tree / "Trout").iterdir())
    Image.new("RGB", (64, 48), (1, 2, 3)).save(victim)
    with pytest.raises(EdgeftError, match="the images changed since the checkpoint"):
        train(replace(cfg, resume=True))
    assert (ck / "state.json").read_bytes() == state


def test_resume_after_the_last_stage_and_overwrite_starting_again(colour_tree, tmp_path, monkeypatch):
    from edgeft.core.manifests import ModelManifest
    from edgeft.train.run import train

    out = tmp_path / "runs"
    cfg = _interrupted(colour_tree, out, monkeypatch)
    resumed = train(replace(cfg, resume=True)).run_dir
    rows = ModelManifest.load(resumed).resumed_from
    assert [(r["stage"], r["epoch"]) for r in rows] == [("head", None)]
    assert sorted(p.name for p in resumed.parent.iterdir()) == ["tiny"]

    _interrupted(colour_tree, out, monkeypatch, overwrite=True)
    fresh = train(replace(cfg, overwrite=True)).run_dir  # --overwrite without --resume: start again
    assert ModelManifest.load(fresh).resumed_from == []
    assert sha256_file(fresh / "model.safetensors") == sha256_file(resumed / "model.safetensors")
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["tiny"]


def test_resume_without_a_checkpoint_is_one_clear_error(colour_tree, tmp_path):
    out = tmp_path / "runs"
    r = subprocess.run([*_cmd(colour_tree, out), "--resume"], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    text = " ".join(r.stderr.split())  # the console wraps long lines
    assert "there is no checkpoint of an interrupted training" in text
    assert ".tiny.resume" in text and "without --resume" in text
    assert not (out / "folder").exists() or not list((out / "folder").iterdir())

    from edgeft.train.run import TrainConfig, train

    with pytest.raises(EdgeftError, match="--resume needs the --name"):
        train(TrainConfig(task="folder", data=colour_tree, backbone="tinynet", out=out, resume=True))


def test_complete_run_survives_killed_overwrite_resume_attempts(tiny_run, colour_tree, copy_dir, tmp_path):
    out = tmp_path / "runs"
    (out / "folder").mkdir(parents=True)
    run = copy_dir(tiny_run, "runs/folder/tiny")
    before = _snapshot(run)
    cmd = _cmd(colour_tree, out, "--overwrite")
    first = _kill_when(cmd, out, lambda d: bool(d["entries"]), tmp_path / "1.log")
    assert _snapshot(run) == before

    from edgeft.train.run import TrainConfig, train

    cfg = TrainConfig(
        task="folder", data=colour_tree, backbone="tinynet", epochs=EPOCHS, patience=EPOCHS, out=out, name="tiny"
    )
    with pytest.raises(EdgeftError, match="a run with this name already exists"):
        train(replace(cfg, resume=True))  # --resume alone never replaces a complete run
    assert _snapshot(run) == before and _state(out) == first

    _kill_when([*cmd, "--resume"], out, lambda d: d["seq"] > first["seq"], tmp_path / "2.log")
    assert _snapshot(run) == before
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert _snapshot(run) != before and len(json.loads((run / "model.json").read_text())["resumed_from"]) == 2
    assert sorted(p.name for p in run.parent.iterdir()) == ["tiny"]
