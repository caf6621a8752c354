"""Distributed set-up of a training run: torchrun's environment, the process group, each worker's device."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _env_int(name: str, default: int, minimum: int) -> int:
    value = os.environ.get(name, "")
    try:
        n = int(value) if value.strip() else default
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum} (torchrun sets it)")
    return n


def torchrun_env() -> tuple[int, int]:
    """(WORLD_SIZE, LOCAL_RANK) from torchrun's environment (1, 0 without it); ValueError when inconsistent."""
    world = _env_int("WORLD_SIZE", 1, 1)
    local = _env_int("LOCAL_RANK", 0, 0)
    if world > 1 and _env_int("RANK", 0, 0) >= world:
        raise ValueError(f"RANK={os.environ['RANK']} is not below WORLD_SIZE={world}")
    return world, local


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    """Join torchrun's process group (gloo on CPU, nccl on GPU) and pick this worker's device."""
    world, local = torchrun_env()
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # generous timeout: the other workers wait at a barrier while rank 0 validates
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, local), dev
