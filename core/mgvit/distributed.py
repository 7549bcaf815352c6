"""Distributed training (torchrun) support: join the process group, this rank, cross-rank means, DDP."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["all_reduce_mean", "init_distributed_from_env", "world", "wrap_for_training"]


def init_distributed_from_env(environ: Mapping[str, str] | None = None) -> torch.device | None:
    """Call once at the CLI edge: under torchrun with WORLD_SIZE > 1, join the process group and
    return this rank's device (cuda:LOCAL_RANK, or cpu with gloo). Returns None when not distributed.

    environ: the process environment read by the entry point (os.environ when None).
    """
    import torch.distributed as dist

    environ = os.environ if environ is None else environ
    if int(environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_for_training(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """The module the training steps call: the model itself, or its DistributedDataParallel wrapper."""
    if world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_mean(values: torch.Tensor, device: torch.device, world_size: int) -> torch.Tensor:
    """Mean of `values` over all ranks (on the CPU); `values` itself when not distributed."""
    if world_size <= 1:
        return values
    import torch.distributed as dist

    tensor = values.to(device)
    dist.all_reduce(tensor)
    return (tensor / world_size).cpu()
