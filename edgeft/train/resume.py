"""Checkpoints of an unfinished training: `edgeft train --name NAME --resume` continues a killed run.

While a training runs, a hidden sibling of its run dir, OUT/TASK/.NAME.resume/, holds

    state.json                    ResumeDoc: the options and inputs the training started with, every step done
    NNNNNN-<step>.safetensors     that step's tensors: weights, optimizer moments, the torch RNG state

Steps are `fit.<stage>`, the state of a fit in progress after an epoch (model and best weights, optimizer,
learning-rate schedule, the shuffling generator, early-stopping counters), and `<stage>`, written once a
stage is complete: the head candidates (`head.linear`, `head.mlp`), the final (refitted) `head`, `finetune`
or `scratch`. Features need no step (the feature cache keeps them); calibration and the run dir are
recomputed from the last stage (seconds, deterministic). Every step records the Python, NumPy and torch
RNG states, so a resumed training gives the weights an uninterrupted one gives. A fit saves after an epoch
once the time since the last save is SAVE_RATIO times what a save takes: checkpoints cost at most about
1/SAVE_RATIO of the training time, and an epoch of real fine-tuning (far longer than a save) is saved
every epoch, while a head on cached features saves every few epochs.

A step writes its tensors to a new file, then state.json (atomically) naming it, then removes the files
no step names: a kill at any moment leaves a state.json that names complete files. The checkpoint is
removed once the run dir is complete; a killed or failed training keeps it (unless it holds no step yet),
and a lock on the directory keeps two trainings from writing one checkpoint.

Rules (the CLI's --help and the README say the same):
  * --resume without a checkpoint is refused: run the command without --resume.
  * --resume with other options than the checkpoint's is refused, naming the options that differ.
  * a checkpoint found without --resume is refused: --resume continues it, --overwrite discards it.
  * --resume never replaces a complete run of the same name unless --overwrite is given too.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeft.core.errors import EdgeftError
from edgeft.core.files import DIR_MODE, write_bytes_atomic
from edgeft.core.manifests import ResumeDoc, ResumeEntry
from edgeft.core.progress import Reporter

RESUME_TAG = ".resume"
STATE_FILE = "state.json"
# Options a resumed training may change: they locate the checkpoint or only say how to run.
NOT_COMPARED = ("resume", "overwrite", "out", "name", "workers")
PATH_OPTIONS = ("data", "init", "backbone_weights")
OPTION_NAMES = {
    "task": "the command (train fish / train folder)",
    "fractions": "--val-frac/--calib-frac/--test-frac",
    "refit": "--refit/--no-refit",
    "processes": "the number of training processes (torchrun --nproc_per_node)",
}
SAVE_RATIO = 10.0
DAMAGED_FIX = "pass --overwrite without --resume to discard the checkpoint and start again"

Tensors = dict[str, torch.Tensor]


def resume_dir(target: Path) -> Path:
    """Where the checkpoint of the run dir `target` lives while it is being trained."""
    return target.parent / f".{target.name}{RESUME_TAG}"


def has_checkpoint(target: Path) -> bool:
    """Whether an interrupted training of run dir `target` left a checkpoint with progress in it."""
    path = resume_dir(target)
    return path.exists() and _has_steps(path / STATE_FILE)


def compared_config(record: dict[str, Any]) -> dict[str, Any]:
    """The options a checkpoint must share with the command resuming it; paths compared resolved."""
    out = {k: v for k, v in record.items() if k not in NOT_COMPARED}
    for k in PATH_OPTIONS:
        if out.get(k) is not None:
            out[k] = str(Path(out[k]).expanduser().resolve())
    return out


def option_name(key: str) -> str:
    return OPTION_NAMES.get(key, "--" + key.replace("_", "-"))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'--epochs 50 (checkpoint: 40)' for each option that differs."""
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{option_name(k)} {json.dumps(new.get(k))} (checkpoint: {json.dumps(old.get(k))})")
    return out


def _rng_capture() -> tuple[dict[str, Any], Tensors]:
    """The Python, NumPy and torch RNG states: the state vectors as tensors, the few scalars as JSON."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    js = {"python": [version, gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)]}
    tensors = {
        "rng.python": torch.tensor(state, dtype=torch.int64),
        "rng.numpy": torch.from_numpy(keys.astype(np.int64)),
        "rng.torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return js, tensors


def _rng_restore(js: dict[str, Any], tensors: Tensors) -> None:
    if "python" in js and "rng.python" in tensors:
        version, gauss = js["python"]
        random.setstate((version, tuple(int(v) for v in tensors["rng.python"].tolist()), gauss))
    if "numpy" in js and "rng.numpy" in tensors:
        name, pos, has_gauss, cached = js["numpy"]
        np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _lock(path: Path) -> int | None:
    """An exclusive, non-blocking lock on the checkpoint dir (released by the kernel if the process dies)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: one training per name is then the user's care
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EdgeftError(
            "another `edgeft train` of this run name is running and writing this checkpoint",
            path=path,
            fix="wait for it to finish, or pick another --name",
        ) from None
    return fd


def _has_steps(state: Path) -> bool:
    """Whether a checkpoint holds training progress (an unreadable one counts: never deleted unasked). Without
    its state.json (a training killed between creating the directory and writing it) nothing can be resumed."""
    if not state.exists():
        return False
    try:
        return bool(json.loads(state.read_text()).get("entries"))
    except (OSError, ValueError, AttributeError):
        return True


class Slot:
    """The checkpoint of one fit in progress, as `fit(..., resume=)` uses it."""

    def __init__(self, checkpoint: Checkpoint, key: str):
        self.checkpoint, self.key = checkpoint, key

    def load(self) -> tuple[dict[str, Any], Tensors] | None:
        return self.checkpoint.get(self.key)

    def due(self) -> bool:
        """Whether saving now keeps checkpoints under 1/SAVE_RATIO of the time (the first epoch always is)."""
        ck = self.checkpoint
        return ck.writer and time.monotonic() - ck.last_put >= SAVE_RATIO * ck.put_seconds

    def save(self, meta: dict[str, Any], tensors: Tensors) -> None:
        self.checkpoint.put(self.key, meta, tensors)


class Checkpoint:
    """The checkpoint of one training. `writer` is False on the ranks of a multi-process training other
    than rank 0: they read what rank 0 loaded and never write."""

    def __init__(self, path: Path, doc: ResumeDoc, loaded: dict[str, Tensors], writer: bool, lock: int | None):
        self.path, self.doc, self.loaded, self.writer, self._lock = path, doc, loaded, writer, lock
        self.last_put, self.put_seconds = 0.0, 0.0

    @classmethod
    def open(cls, target: Path, record: dict[str, Any], resume: bool, overwrite: bool, rep: Reporter) -> Checkpoint:
        """The checkpoint of run dir `target`: the interrupted one (resume) or a new, empty one."""
        path = resume_dir(target)
        config = compared_config(record)
        lock = _lock(path) if path.is_dir() else None
        try:
            if resume:
                return cls._resume(path, config, lock, rep)
            if path.exists():
                progress = _has_steps(path / STATE_FILE)
                if progress and not overwrite:
                    raise EdgeftError(
                        "an interrupted training of this run name left a checkpoint",
                        path=path,
                        fix="pass --resume to continue it, or --overwrite to discard it and start again",
                    )
                if progress:
                    rep.note(f"--overwrite: discarding the checkpoint of an interrupted training ({path})")
                shutil.rmtree(path)
        except BaseException:
            _unlock(lock)
            raise
        _unlock(lock)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise EdgeftError(
                "another `edgeft train` of this run name started at the same moment",
                path=path,
                fix="wait for it to finish, or pick another --name",
            ) from None
        os.chmod(path, DIR_MODE)
        lock = _lock(path)
        doc = ResumeDoc(config=config)
        doc.write(path / STATE_FILE)
        return cls(path, doc, {}, True, lock)

    @classmethod
    def _resume(cls, path: Path, config: dict[str, Any], lock: int | None, rep: Reporter) -> Checkpoint:
        state = path / STATE_FILE
        if not state.is_file():
            raise EdgeftError(
                "--resume: there is no checkpoint of an interrupted training with this run name",
                path=path,
                fix="run the same command without --resume to start the training",
            )
        doc = ResumeDoc.read(state, "checkpoint state.json", DAMAGED_FIX)
        diff = differences(doc.config, config)
        if diff:
            raise EdgeftError(
                f"--resume: the checkpoint was written with other options: {'; '.join(diff)}",
                path=path,
                fix="resume with the options of the interrupted command, or pass --overwrite without --resume "
                "to discard the checkpoint and start again",
            )
        loaded = {}
        for key, entry in doc.entries.items():
            loaded[key] = _read_tensors(path, entry)
        ck = cls(path, doc, loaded, True, lock)
        where = ck.position()
        if where is not None:
            rep.note(f"resuming from the checkpoint in {path}: {ck.describe(where)}")
            doc.resumed_from = [*doc.resumed_from, where]  # written with the next step: refusals change nothing
        return ck

    # -- what is in it

    def position(self) -> dict[str, Any] | None:
        """The step a resumed training continues after: {'stage', 'epoch' (None: stage complete), 'done'}."""
        if not self.doc.entries:
            return None
        key, entry = max(self.doc.entries.items(), key=lambda kv: kv[1].seq)
        done = sorted((k for k in self.doc.entries if not k.startswith("fit.")), key=self._seq)
        epoch = entry.meta.get("epoch") if key.startswith("fit.") else None
        return {"stage": key.removeprefix("fit."), "epoch": epoch, "done": done}

    @staticmethod
    def describe(where: dict[str, Any]) -> str:
        done = ", ".join(where["done"]) or "nothing"
        if where["epoch"] is None:
            return f"done: {done}"
        return f"done: {done}; {where['stage']} continues after epoch {where['epoch']}"

    def _seq(self, key: str) -> int:
        return self.doc.entries[key].seq

    @property
    def progress(self) -> bool:
        return bool(self.doc.entries)

    def check_inputs(self, inputs: dict[str, str]) -> None:
        """Record the training's inputs (data, backbone) in a new checkpoint; refuse changed ones on resume."""
        if not self.doc.inputs:
            if self.writer:
                self.doc.inputs = dict(inputs)
                self.doc.write(self.path / STATE_FILE)
            return
        changed = [k for k in sorted(set(inputs) | set(self.doc.inputs)) if inputs.get(k) != self.doc.inputs.get(k)]
        if changed:
            raise EdgeftError(
                f"--resume: the {' and '.join(changed)} changed since the checkpoint was written "
                "(images added, removed or edited, or other backbone weights)",
                path=self.path,
                fix="restore them, or pass --overwrite without --resume to start again on what is there now",
            )

    # -- steps

    def get(self, key: str) -> tuple[dict[str, Any], Tensors] | None:
        """A step's (JSON state, tensors), restoring the RNG states recorded with it; None if not done."""
        entry = self.doc.entries.get(key)
        if entry is None:
            return None
        tensors = self.loaded.get(key)
        if tensors is None:
            tensors = self.loaded[key] = _read_tensors(self.path, entry)
        _rng_restore(entry.rng, tensors)
        return copy.deepcopy(entry.meta), {k: v.clone() for k, v in tensors.items() if not k.startswith("rng.")}

    def put(self, key: str, meta: dict[str, Any], tensors: Tensors | None = None, drop: Iterable[str] = ()) -> None:
        """Record a step (with the RNG states now), and forget the steps in `drop` (prefixes ending in '.')."""
        if not self.writer:
            return
        from safetensors.torch import save

        start = time.monotonic()
        rng, rng_tensors = _rng_capture()
        seq = self.doc.seq + 1
        every = {k: v.detach().cpu().contiguous().clone() for k, v in (tensors or {}).items()} | rng_tensors
        name = f"{seq:06d}-{key}.safetensors"
        write_bytes_atomic(self.path / name, save(every))  # durable before state.json names it
        entries = {k: e for k, e in self.doc.entries.items() if not _dropped(k, drop)}
        entries[key] = ResumeEntry(seq=seq, meta=meta, tensors=name, rng=rng)
        self.doc.entries = entries
        self.doc.seq = seq
        self.doc.write(self.path / STATE_FILE)
        for k in [k for k in self.loaded if k not in entries or k == key]:
            del self.loaded[k]
        named = {e.tensors for e in entries.values()}
        for f in self.path.glob("*.safetensors"):
            if f.name not in named:
                f.unlink(missing_ok=True)
        self.last_put = time.monotonic()
        self.put_seconds = self.last_put - start

    def slot(self, key: str) -> Slot:
        return Slot(self, key)

    # -- multi-process: rank 0 opens, the other ranks get a read-only copy

    def replica(self) -> tuple[dict[str, Any], dict[str, Tensors]]:
        return self.doc.model_dump(mode="python"), self.loaded

    @classmethod
    def from_replica(cls, path: Path, payload: tuple[dict[str, Any], dict[str, Tensors]]) -> Checkpoint:
        doc, loaded = payload
        return cls(path, ResumeDoc.model_validate(doc), dict(loaded), False, None)

    # -- the end

    def close(self, completed: bool) -> bool:
        """Remove the checkpoint when the run is complete, or when it holds no step; True if it was kept."""
        kept = True
        if self.writer and (completed or not self.progress):
            shutil.rmtree(self.path, ignore_errors=True)
            kept = False
        _unlock(self._lock)
        self._lock = None
        return kept and self.writer


def _dropped(key: str, drop: Iterable[str]) -> bool:
    return any(key == d or (d.endswith(".") and key.startswith(d)) for d in drop)


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _read_tensors(path: Path, entry: ResumeEntry) -> Tensors:
    if entry.tensors is None:
        return {}
    from safetensors.torch import load_file

    f = path / entry.tensors
    try:
        return load_file(str(f))
    except Exception as exc:  # a missing or torn file: the checkpoint cannot be trusted
        raise EdgeftError(f"checkpoint file is missing or damaged ({exc})", path=f, fix=DAMAGED_FIX) from None
