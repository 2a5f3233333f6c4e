"""Running the same training command under torchrun: process group, device, rank-0 duties."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Cluster:
    """This process's place in the run (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1


def join_cluster(device: torch.device) -> Cluster:
    """Join the process group torchrun describes in the environment (gloo on the CPU, NCCL on GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Cluster()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Cluster(rank, world_size, local_rank)


def local_device(device: torch.device, cluster: Cluster) -> torch.device:
    """Each process of a multi-GPU run uses the GPU of its local rank."""
    if device.type == "cuda" and cluster.distributed:
        torch.cuda.set_device(cluster.local_rank)
        return torch.device("cuda", cluster.local_rank)
    return device


def leave_cluster(cluster: Cluster) -> None:
    """Tear the process group down at the end of a distributed run."""
    if cluster.distributed and dist.is_initialized():
        dist.destroy_process_group()
