"""Distributed set-up for the recipes: (rank, world size, device) from torchrun's environment and the
few collectives the training loop needs; every function is a no-op with one process."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def setup_distributed(device_cfg: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; one process when it is absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_cfg == "cuda" or (device_cfg == "auto" and torch.cuda.is_available())
    if device_cfg == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device='cuda' but no CUDA device is available; use run.device=cpu")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def is_main(rank: int) -> bool:
    return rank == 0


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    """``t`` averaged over the ranks, in place (unchanged with one process)."""
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t


def broadcast_object(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown_distributed() -> None:
    """Destroy the process group at the end of a run (a group left open can abort a rank at exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()
