"""Processes: one script for one CPU, one GPU or many (`torchrun`), and the collectives a
step needs.

`setup_distributed` reads torchrun's environment (`WORLD_SIZE`, `LOCAL_RANK`) and starts the
process group (NCCL on GPUs, gloo on CPUs); a single process never starts one, so every helper
here is a no-op at `world == 1` and the same code path trains on a laptop.

Two collectives stand in for `DistributedDataParallel` (`trainer/step.py` says why):
`gather(..., with_grad=True)` is an all-gather whose backward all-reduces the gradient, so each
process sees every process's candidates in its loss and gets back the gradient of every
process's loss with respect to its own embeddings; `all_reduce_grads` averages the gradients
once per step, in flat buckets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: its rank, the number of processes, its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed() -> tuple[Dist, bool]:
    """This process's place from torchrun's environment; (Dist, whether we initialised it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    started = False
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        started = True
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, device), started


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over processes and keeps our slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor, d: Dist, *, with_grad: bool = False) -> torch.Tensor:
    """Every process's `x`, concatenated in rank order (`x` itself on one process)."""
    if d.world == 1:
        return x
    if with_grad:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_grads(params: list[torch.nn.Parameter], world: int, bucket: int = 1 << 25) -> None:
    """Average gradients over processes, in flat buckets of about `bucket` elements."""
    grads = [p.grad for p in params if p.grad is not None]
    start = 0
    while start < len(grads):
        end, size = start, 0
        while end < len(grads) and (size == 0 or size + grads[end].numel() <= bucket):
            size += grads[end].numel()
            end += 1
        group = grads[start:end]
        flat = torch._utils._flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= world
        for g, synced in zip(
            group, torch._utils._unflatten_dense_tensors(flat, group), strict=True
        ):
            g.copy_(synced)
        start = end
