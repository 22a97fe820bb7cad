"""Data-parallel training: real worker processes (torch's elastic launcher, gloo), real export."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import SequentialSampler, WeightedRandomSampler

from inspection.card import load_card
from inspection.golden import verify_version
from tests.training.conftest import make_dataset
from training.distributed import Ranks, Shard

INSPECTION = [sys.executable, "-m", "inspection"]


def _shards(base: object, world: int) -> list[list[int]]:
    out = []
    for rank in range(world):
        shard = Shard(base, Ranks(rank=rank, world=world))  # type: ignore[arg-type]
        drawn = list(shard)
        assert len(drawn) == len(shard)
        out.append(shard.positions)
    return out


def test_shards_are_disjoint_equal_and_cover_the_draw() -> None:
    shards = _shards(SequentialSampler(range(11)), 3)
    assert [len(s) for s in shards] == [3, 3, 3]  # 11 cut to 9: every rank takes as many steps
    flat = [p for s in shards for p in s]
    assert len(flat) == len(set(flat)) == 9


def test_every_rank_shards_the_same_weighted_draw() -> None:
    # Each rank seeds its own sampler alike, as the training loader does.
    def draw() -> WeightedRandomSampler:
        return WeightedRandomSampler([1.0] * 20, num_samples=20, generator=torch.Generator().manual_seed(7))

    whole = list(draw())
    got = []
    for rank in range(2):
        shard = Shard(draw(), Ranks(rank=rank, world=2))
        got.append(list(shard))
    assert got[0] == whole[0::2] and got[1] == whole[1::2]


def _train_cmd(data: Path, models: Path, *extra: str) -> list[str]:
    return [
        *INSPECTION, "train", "--data", str(data), "--models-dir", str(models), "--image-size", "32",
        "--batch-size", "16", "--max-escape", "0.25", "--no-progress", "--threads", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ddp") / "parts").root


def test_two_ranks_train_one_verified_version(dataset: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    cmd = _train_cmd(dataset, models, "--epochs", "3", "--nproc", "2")
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[rank 0]" in run.stderr
    versions = sorted(p.name for p in (models / "parts").iterdir())
    assert versions == ["v1"]  # rank 0 alone writes: one version, nothing else under models/
    assert not any((models / ".runs").glob("*"))  # the run's checkpoint is gone once exported
    card = load_card(models / "parts" / "v1")
    verify_version(card, models / "parts" / "v1")  # hashes, then the golden frames re-scored
    assert card.parity.max_abs_diff <= card.parity.tolerance
    ddp = card.training["distributed"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    # Both ranks trained on their own half of the epoch's draw: no position twice, all covered.
    assert ddp["positions_on_two_ranks"] == 0
    assert ddp["shard_sizes"][0] == ddp["shard_sizes"][1] == ddp["draw_size"] // 2
    assert ddp["positions_covered"] == 2 * ddp["shard_sizes"][0]
    assert ddp["shard_sha256"][0] != ddp["shard_sha256"][1]


def _workers(root: int) -> list[int]:
    """The launcher's worker processes (multiprocessing spawn children) among ``root``'s descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return sorted(found)


def test_a_dead_rank_fails_the_run_by_name_and_the_checkpoint_resumes(dataset: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    proc = subprocess.Popen(
        _train_cmd(dataset, models, "--epochs", "120", "--patience", "120", "--nproc", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(models.glob(".runs/*/checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        workers = _workers(proc.pid)
        assert len(workers) == 2, f"expected the 2 rank processes, found {workers}"
        victim = workers[-1]
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, err[-3000:]
    assert re.search(rf"training rank [01] of 2 \(pid {victim}\) killed by SIGKILL", err), err[-3000:]
    checkpoint = next(models.glob(".runs/*/checkpoint.pt"))
    assert f"--resume {checkpoint} --nproc 2" in err
    assert not (models / "parts").exists()  # nothing half-written in the registry

    done = torch.load(checkpoint, weights_only=False)["epoch"]
    resumed = subprocess.run(
        [*INSPECTION, "train", "--resume", str(checkpoint), "--nproc", "2", "--no-progress", "--threads", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at epoch {done + 2} of 120" in resumed.stderr
    card = load_card(models / "parts" / "v1")
    verify_version(card, models / "parts" / "v1")
    assert card.training["distributed"]["world_size"] == 2
