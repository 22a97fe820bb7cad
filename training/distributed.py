"""Data-parallel training across processes: PyTorch's own DistributedDataParallel, nothing home-made.

Two ways in, one code path:

* ``inspection train ... --nproc N`` starts N worker processes on this machine through
  torch's elastic launcher (what ``torchrun --standalone`` runs) and waits for them;
* ``torchrun --nnodes M --nproc-per-node N -m training ...`` (several machines: a shared
  ``--models-dir``) starts the workers itself; each finds its rank in the environment.

Every rank runs the same ``training.train.main``: the same split (a function of the data and
the seed), the same recipe (rank 0's choices are broadcast, so a core count read a moment
apart cannot give two ranks two input sizes), its own shard of each epoch's draw, gradients
averaged by DDP. The global batch is the recipe's batch (each rank takes ``batch / world``), so N
processes take the same optimiser steps one process would. Rank 0 alone writes checkpoints and
exports the one model version; the others stop after the last epoch.

Backends: gloo on CPU, NCCL on GPUs (one GPU per local rank).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from inspection.errors import TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank among ``world`` processes (1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def from_env() -> Ranks:
    """The ranks torchrun (or ``launch``) put in the environment; a plain process is rank 0 of 1."""
    try:
        return Ranks(
            rank=int(os.environ.get("RANK", "0")),
            world=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))),
        )
    except ValueError as exc:
        raise TrainingError(f"RANK/WORLD_SIZE/LOCAL_RANK in the environment are not integers: {exc}") from None


def setup(ranks: Ranks, *, cuda: bool) -> torch.device | None:
    """Join the process group (gloo on CPU, NCCL on GPUs); returns this rank's CUDA device."""
    if not ranks.distributed or dist.is_initialized():
        return None
    device = None
    if cuda:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("rank %d of %d joined (%s)", ranks.rank, ranks.world, dist.get_backend())
    return device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not ranks.distributed:
        return value
    box = [value if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


class Shard(Sampler[int]):
    """This rank's share of another sampler's draw: positions ``rank, rank + world, ...``.

    Every rank draws the same full sequence (the same generator seed), so the shards are
    disjoint by position and together cover the draw; the draw is cut to a multiple of
    ``world`` so every rank takes the same number of steps (DDP waits for all of them).
    ``positions`` keeps what was handed out, the evidence the card records.
    """

    def __init__(self, base: Sampler[int], ranks: Ranks) -> None:
        self.base, self.ranks = base, ranks
        self.positions: list[int] = []

    def __len__(self) -> int:
        return len(self.base) // self.ranks.world  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        draw = list(self.base)
        usable = len(draw) - len(draw) % self.ranks.world
        self.positions = list(range(self.ranks.rank, usable, self.ranks.world))
        return iter([draw[p] for p in self.positions])


def shard_evidence(positions: list[int], ranks: Ranks, draw_size: int) -> dict[str, Any]:
    """What each rank trained on in one epoch, gathered: sizes, digests, and positions taken twice."""
    every = gather(positions, ranks)
    seen: set[int] = set()
    twice = 0
    for shard in every:
        twice += len(seen.intersection(shard))
        seen.update(shard)
    return {
        "world_size": ranks.world,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "draw_size": draw_size,
        "shard_sizes": [len(s) for s in every],
        "shard_sha256": [hashlib.sha256(repr(list(s)).encode()).hexdigest()[:16] for s in every],
        "positions_on_two_ranks": twice,
        "positions_covered": len(seen),
    }


def launch(target: Any, args: tuple[Any, ...], nproc: int, *, models_dir: Path) -> Any:
    """Run ``target(*args)`` in ``nproc`` local worker processes (torch's elastic launcher, as
    ``torchrun --standalone`` does) and return rank 0's result.

    Raises:
        TrainingError: a worker failed or died; names the rank, its exit code or signal, and the
            checkpoint to resume from.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,  # a dead rank fails the run: the engineer resumes from the checkpoint
        monitor_interval=0.5,
    )
    started = time.time()
    try:
        results = elastic_launch(config, target)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = (
            f"killed by {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with code {failure.exitcode}: {failure.message}"
        )
        raise TrainingError(
            f"training rank {rank} of {nproc} (pid {failure.pid}) {how}; the run stopped on every rank. "
            + _resume_hint(models_dir, started, nproc)
        ) from None
    return results[0]


def _resume_hint(models_dir: Path, since: float, nproc: int) -> str:
    runs = [p for p in (Path(models_dir) / ".runs").glob("*/checkpoint.pt") if p.stat().st_mtime >= since]
    if not runs:
        return "No epoch had finished, so there is no checkpoint: start the run again."
    last = max(runs, key=lambda p: p.stat().st_mtime)
    return f"Resume from the last finished epoch with: inspection train --resume {last} --nproc {nproc}"
