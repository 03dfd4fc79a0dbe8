"""DistributedDataParallel plumbing for runs launched by ``torchrun``.

``torchrun --nproc-per-node N`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous
address; :func:`setup` joins the process group with gloo on CPU and nccl on CUDA. A plain
``python`` launch is a world of one and touches nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "all_reduce_sum", "broadcast_buffers", "setup", "teardown"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files, logs and draws progress bars."""
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the ``torchrun`` process group if there is one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def teardown() -> None:
    """Leave the process group (after a barrier) if one was joined; call once, at the end.

    Without it a process that finishes first can tear the group down under the others.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over all processes (in place; a no-op in a world of one)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP synchronises gradients, so parameters agree everywhere, but each process updates its
    running statistics from its own batches; evaluating and saving need one agreed copy.
    """
    if info.enabled:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)
