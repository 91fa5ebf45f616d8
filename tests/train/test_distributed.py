"""`torchrun --nproc_per_node 2 -m edgeft train ...` on CPU/gloo: one run dir, written once, the features and
the head a single process gets; errors on any rank end every rank with one message, and never hang."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import edgeft
from edgeft.core.hashing import sha256_file
from edgeft.serve.server import free_port

pytestmark = pytest.mark.slow

FINETUNE_LR = 1e-4  # TrainConfig's default --finetune-lr; the bound below depends on it
OPTS = ["--backbone", "tinynet", "--epochs", "20", "--patience", "20", "--device", "cpu"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(edgeft.__file__).parents[1]), **extra}


def _torchrun(*args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return [*launcher, "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]


def test_two_ranks_write_one_run_with_the_features_and_head_of_one_process(colour_tree, tmp_path):
    from edgeft.train.run import TrainConfig, train

    out, cache = tmp_path / "runs", tmp_path / "cache"  # a cold cache: the feature pass is shared out
    args = ["train", "folder", "--data", str(colour_tree), *OPTS, "--finetune-epochs", "1", "--finetune-blocks", "1"]
    r = subprocess.run(
        _torchrun("-m", "edgeft", *args, "--out", str(out), "--name", "dd"),
        capture_output=True,
        text=True,
        env=_env(EDGEFT_CACHE=str(cache)),
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("Run dir:") == 1 and r.stdout.count("Test accuracy:") == 1  # rank 0 reports, alone
    assert "rank 1" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    run = out / "folder" / "dd"
    assert sorted(p.name for p in run.parent.iterdir()) == ["dd"]  # no second run, partial or checkpoint
    assert (run / "model.json").is_file()

    single = train(
        TrainConfig(
            task="folder",
            data=colour_tree,
            backbone="tinynet",
            epochs=20,
            patience=20,
            finetune_epochs=1,
            finetune_blocks=1,
            device="cpu",
            out=tmp_path / "single",
            name="dd",
        )
    ).run_dir

    # The sharded feature pass computes each image's features as one process does (same exported backbone,
    # same ONNX Runtime engine): the cache it wrote once holds exactly the single-process entries.
    mine = sorted(p.relative_to(cache) for p in cache.rglob("*.npy"))
    assert len(mine) == 128 and not list(cache.rglob("*.tmp"))
    session = Path(os.environ["EDGEFT_CACHE"])
    for rel in mine:
        assert np.array_equal(np.load(cache / rel), np.load(session / rel)), rel

    # On identical gathered features every rank fits the head a single process fits: the whole head phase
    # (both candidates' histories, the choice, the refit) is the same, number for number.
    dd, one = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert dd["phases"]["head"] == one["phases"]["head"]
    assert dd["head_selection"] == one["head_selection"]

    # Fine-tuning is not bit-identical: DDP averages gradients over two shards of half batches and the
    # unfrozen BatchNorm sees per-rank batch statistics. What holds: the blocks left frozen are untouched;
    # the fine-tuned weights start from the same head-phase weights and move by one epoch of AdamW at
    # lr <= FINETUNE_LR (3 steps of about lr each), so they stay within a few lr of each other; the running
    # BatchNorm statistics average 3 batches' statistics of the same images (momentum 0.1), so they differ
    # by a fraction of the batch-to-batch spread, far below their own scale.
    got, want = load_file(str(run / "model.safetensors")), load_file(str(single / "model.safetensors"))
    assert got.keys() == want.keys()
    tuned = ("backbone.blocks.2.", "head.")
    for k in want:
        if not k.startswith(tuned):
            assert torch.equal(got[k], want[k]), k
        elif k.endswith(("running_mean", "running_var")):
            assert torch.allclose(got[k], want[k], atol=1e-2, rtol=0), k
        elif want[k].is_floating_point():
            assert torch.allclose(got[k], want[k], atol=30 * FINETUNE_LR, rtol=0), k
    assert len(dd["phases"]["finetune"]["history"]) == 1
    n = dd["test"]["n"]
    assert n == one["test"]["n"] and abs(dd["test"]["accuracy"] - one["test"]["accuracy"]) <= 1 / n


PROBE = """
import json, os, sys
from edgeft.core.errors import EdgeftError
from edgeft.train.distributed import from_env

dist = from_env()
out = {"main": None, "error": None}
try:
    out["main"] = dist.on_main(lambda: {"answer": 42, "from": dist.rank})
    if sys.argv[2] == "error":
        def work():
            if dist.rank == 1:
                raise EdgeftError("cannot read an image", path="/data/x.png", fix="replace it")
            return dist.rank
        dist.agree(work)
    else:
        if dist.rank == 1:
            os._exit(3)  # dies without a word
        dist.gather("anyone?")
except EdgeftError as exc:
    out["error"] = [exc.message, exc.path, exc.fix, getattr(exc, "shared", False)]
json.dump(out, open(os.path.join(sys.argv[1], f"rank{dist.rank}.json"), "w"))
dist.close()
"""


def test_an_error_on_one_rank_ends_every_rank_and_a_lost_rank_never_hangs(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    r = subprocess.run(_torchrun(str(probe), str(tmp_path), "error"), capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["main"] == {"answer": 42, "from": 0}  # rank 0's result, everywhere
        assert got["error"] == ["rank 1: cannot read an image", "/data/x.png", "replace it", True]

    (tmp_path / "rank0.json").unlink()
    port = str(free_port())  # plain processes, no torchrun agent to stop the survivor
    procs = [
        subprocess.Popen(
            [sys.executable, str(probe), str(tmp_path), "die"],
            env=_env(
                WORLD_SIZE="2",
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                EDGEFT_DIST_TIMEOUT="60",
            ),
            stderr=subprocess.DEVNULL,
        )
        for rank in (0, 1)
    ]
    assert [p.wait(timeout=50) for p in procs] == [0, 3]  # far sooner than the 60 s timeout
    message, _, fix, shared = json.loads((tmp_path / "rank0.json").read_text())["error"]
    assert message.startswith("rank 0: lost the other ranks during an exchange") and not shared
    assert "another rank failed" in fix


def test_a_refused_run_under_torchrun_is_one_message(tiny_run, colour_tree, tmp_path):
    out = tmp_path / "runs"
    (out / "folder").mkdir(parents=True)
    run = out / "folder" / "tiny"
    shutil.copytree(tiny_run, run)
    before = {p.name: sha256_file(p) for p in run.iterdir() if p.is_file()}
    args = ["train", "folder", "--data", str(colour_tree), *OPTS, "--out", str(out), "--name", "tiny"]
    r = subprocess.run(_torchrun("-m", "edgeft", *args), capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode != 0
    text = " ".join((r.stdout + r.stderr).split())
    assert text.count("a run with this name already exists") == 1  # rank 0 says it; rank 1 ends quietly
    assert "exitcode : 2" in text  # both ranks exit with edgeft's usage code (torchrun's own summary)
    assert {p.name: sha256_file(p) for p in run.iterdir() if p.is_file()} == before


def test_a_lost_rank_inside_fine_tuning_is_one_clear_error_and_other_failures_stay_themselves():
    """DDP's gradient all-reduce and the best-weights broadcast run inside fit(): a transport failure there
    reads like one in an exchange, not a gloo traceback; a bug in the work itself is not disguised."""
    from edgeft.core.errors import EdgeftError
    from edgeft.train.distributed import Dist

    dist = Dist(rank=0, world=2)

    def lost():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:29500: Connection reset by peer")

    def bug():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x3 and 4x2)")

    with pytest.raises(EdgeftError, match="rank 0: lost the other ranks during fine-tuning"):
        dist.guarded("fine-tuning", lost)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        dist.guarded("fine-tuning", bug)
    assert Dist().guarded("fine-tuning", lambda: 7) == 7
    with pytest.raises(RuntimeError, match="Connection reset"):
        Dist().guarded("fine-tuning", lost)  # a single process has no ranks to lose
