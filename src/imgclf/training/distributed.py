"""Multi-process training on PyTorch's own engine: torchrun + DistributedDataParallel.

`torchrun --nproc-per-node N -m imgclf train …` (or `imgclf train --devices N`, which starts
torchrun for you) runs N ranks: NCCL on GPUs, gloo on CPUs. Every rank makes the same seeded split
and sees its own shard of every epoch; metrics are summed across ranks; only rank 0 writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from imgclf.errors import UsageError

# A rank that dies leaves the others waiting in a collective; they give up after this long, and
# torchrun's agent stops the whole group as soon as one worker exits with an error.
TIMEOUT = timedelta(minutes=int(os.environ.get("IMGCLF_DIST_TIMEOUT_MIN", "10")))


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (environment variables), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return DistInfo(rank, world_size, local_rank)


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each rank on a machine takes its own GPU."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return device


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op alone)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's value, on every rank."""
    if not info.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def launch(devices: int, argv: list[str]) -> int:
    """Run `imgclf <argv>` under torchrun with `devices` processes on this machine; its exit code."""
    if devices < 1:
        raise UsageError("--devices must be at least 1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={devices}",
        "-m",
        "imgclf",
        *argv,
    ]
    return subprocess.call(command)
