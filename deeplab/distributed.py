"""Process-group set-up for DDP under torchrun (NCCL on GPUs, gloo on CPU); a single process otherwise."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from deeplab.device import resolve


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device_setting: str = "auto") -> Context:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK) on the
    device ``device_setting`` (train.device) gives this process: its local GPU, or the CPU (deeplab.device
    raises, naming the cause, when a required GPU is not usable)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve(device_setting, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def any_rank(ctx: Context, flag: bool) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_tensor(ctx: Context, value: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) a tensor across ranks in place and return it."""
    if ctx.distributed:
        dist.all_reduce(value)
    return value
