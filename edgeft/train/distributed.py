"""One training over several processes: `torchrun --nproc_per_node N -m edgeft train ...`, on CPU with gloo.

torchrun gives each process WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
`from_env` joins them into one gloo process group. Without WORLD_SIZE (or with WORLD_SIZE=1) training is
the single process it always was, and every helper here does nothing.

Who does what (edgeft.train.run):
  * the scan, the splits, the checkpoint and the run dir: rank 0; the dataset and checkpoint reach the
    other ranks by broadcast, and only rank 0 prints, writes and reports.
  * the frozen-backbone features: the images missing from the cache are dealt out over the ranks
    (FeatureExtractor.extract(shard=)); every rank then holds every feature (all_gather), and one process
    per machine (LOCAL_RANK 0) writes the cache, so no two processes write an entry.
  * the head on cached features: every rank fits the same head on the same gathered features (seconds;
    nobody waits), so it is the head a single process fits.
  * fine-tuning (or training from scratch): DistributedDataParallel over gloo, a DistributedSampler
    reshuffled each epoch from the seed, the global batch kept at --batch-size; rank 0's val loss decides
    early stopping for all; rank 0 saves the checkpoint.

Errors: a user error (EdgeftError) on any rank reaches every rank at the next exchange (`agree`,
`on_main`), and all ranks end with it; rank 0 prints it, naming the rank it came from. Every collective
has a timeout (EDGEFT_DIST_TIMEOUT seconds, default 1800), and a rank that loses its peers ends with a
clear error instead of waiting; torchrun also stops every rank when one fails.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as tdist
from torch import nn

from edgeft.core.errors import EdgeftError

T = TypeVar("T")
TIMEOUT_ENV = "EDGEFT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
LAUNCH_FIX = "launch every rank with torchrun, e.g. torchrun --nproc_per_node 2 -m edgeft train fish ..."


def _first_line(exc: BaseException) -> str:
    """The gist of a torch.distributed error: its first line, without gloo's source location."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", first)[:200]


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0") or 0) if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else 0
    except ValueError:
        return 0


def timeout_s() -> float:
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    except ValueError:
        raise EdgeftError(
            f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of seconds", fix=f"e.g. {TIMEOUT_ENV}=600"
        ) from None


class PeerError(EdgeftError):
    """An error every rank ends with, raised on the rank named in its message; rank 0 prints it."""

    shared = True

    def __init__(self, message: str, *, path: str | None, fix: str | None, exit_code: int):
        super().__init__(message, path=path, fix=fix)
        self.exit_code = exit_code


def _pack(exc: EdgeftError, rank: int) -> tuple[str, str | None, str | None, int]:
    message = exc.message if rank == 0 or isinstance(exc, PeerError) else f"rank {rank}: {exc.message}"
    return message, exc.path, exc.fix, exc.exit_code


def _unpack(packed: tuple[str, str | None, str | None, int]) -> PeerError:
    message, path, fix, code = packed
    return PeerError(message, path=path, fix=fix, exit_code=code)


_TRANSPORT_ERRORS = ("gloo", "Connection reset", "Connection closed", "Broken pipe", "Timed out", "timed out")


@dataclass
class Dist:
    """This process's place in the training; Dist() is the single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def writes_cache(self) -> bool:
        """One process per machine writes the feature cache."""
        return self.local_rank == 0

    def threads(self) -> int:
        """torch threads: the machine's cores (at most 8) shared by the processes on it."""
        return max(1, min(os.cpu_count() or 1, 8) // self.local_world)

    # -- collectives (no-ops in a single process); a lost peer or a timeout is one clear error

    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (tdist.DistError, RuntimeError) as exc:
            raise self._lost(what, exc) from None

    def _lost(self, what: str, exc: BaseException) -> EdgeftError:
        return EdgeftError(
            f"rank {self.rank}: lost the other ranks during {what} ({_first_line(exc)})",
            fix="another rank failed or was stopped (its message is above), or took longer than "
            f"{TIMEOUT_ENV}={timeout_s():.0f} s; fix that and run again",
        )

    def guarded(self, what: str, fn: Callable[[], T]) -> T:
        """Run work that holds collectives inside it (DDP's gradient all-reduce, a broadcast of the best
        weights): a lost rank or a timeout there is the same one clear error as in `gather`, while any other
        failure of fn stays itself."""
        if not self.active:
            return fn()
        try:
            return fn()
        except tdist.DistError as exc:
            raise self._lost(what, exc) from None
        except RuntimeError as exc:
            if not any(mark in str(exc) for mark in _TRANSPORT_ERRORS):
                raise
            raise self._lost(what, exc) from None

    def gather(self, obj: T) -> list[T]:
        """obj of every rank, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        self._collective("an exchange", lambda: tdist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's obj, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        self._collective("a broadcast", lambda: tdist.broadcast_object_list(box, src=0))
        return box[0]

    def barrier(self) -> None:
        if self.active:
            self._collective("a barrier", lambda: tdist.monitored_barrier(timeout=timedelta(seconds=timeout_s())))

    # -- errors reach every rank

    def agree(self, fn: Callable[[], T]) -> list[T]:
        """Run fn on every rank; an EdgeftError on any rank is raised on all of them, else every result."""
        if not self.active:
            return [fn()]
        try:
            mine: tuple = (None, fn())
        except EdgeftError as exc:
            mine = (_pack(exc, self.rank), None)
        everyone = self.gather(mine)
        for err, _ in everyone:
            if err is not None:
                raise _unpack(err)
        return [result for _, result in everyone]

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn on rank 0 only; its result, or its EdgeftError, reaches every rank."""
        if not self.active:
            return fn()
        payload: tuple = (None, None)
        if self.main:
            try:
                payload = (None, fn())
            except EdgeftError as exc:
                payload = (_pack(exc, 0), None)
        err, result = self.broadcast(payload)
        if err is not None:
            raise _unpack(err)
        return result

    @contextlib.contextmanager
    def cache_writer_first(self) -> Iterator[None]:
        """The body runs on the cache-writing rank of each machine first (e.g. an export into the cache)."""
        if not self.active:
            yield
            return
        if not self.writes_cache:
            self.barrier()
        yield
        if self.writes_cache:
            self.barrier()

    # -- models

    def parallel(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around model (rank 0's weights and buffers everywhere), or model itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return self._collective("the model broadcast", lambda: DistributedDataParallel(model))

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()


def from_env() -> Dist:
    """Join the process group torchrun describes in the environment, or Dist() for a single process."""
    env = os.environ
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        raise EdgeftError(f"WORLD_SIZE={env['WORLD_SIZE']!r} is not a number", fix=LAUNCH_FIX) from None
    if world <= 1:
        return Dist()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise EdgeftError(f"WORLD_SIZE={world} is set, but not {', '.join(missing)}", fix=LAUNCH_FIX)
    rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"])
    dist = Dist(rank, world, local_rank, int(env.get("LOCAL_WORLD_SIZE", world) or world))
    if tdist.is_initialized():
        return dist
    if not tdist.is_gloo_available():
        raise EdgeftError("this torch build has no gloo backend for multi-process training", fix=LAUNCH_FIX)
    limit = timeout_s()
    try:
        tdist.init_process_group(
            "gloo", init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=limit)
        )
    except (tdist.DistError, RuntimeError, ValueError) as exc:
        first = _first_line(exc)
        raise EdgeftError(
            f"rank {rank}: could not join the {world} training processes at "
            f"{env['MASTER_ADDR']}:{env['MASTER_PORT']} within {limit:.0f} s ({first})",
            fix=f"{LAUNCH_FIX}; every rank needs the same MASTER_ADDR and MASTER_PORT ({TIMEOUT_ENV} sets the wait)",
        ) from None
    return dist
