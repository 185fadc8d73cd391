"""Minimal ``torch.distributed`` helpers: rank, world size, all-gather with and without gradient.

Every helper is the identity (or 0 / 1) when ``torch.distributed`` is not initialised, so the
same method code runs on one CPU process and on many GPUs.

``gather_with_grad`` follows the convention of solo-learn's / lightly's ``GatherLayer`` (gather
with gradient when the textbook gradient is wanted; docs/distributed.md): in backward, the gradients every process computed for the gathered tensor
are summed over processes (all-reduce) and each process keeps the slice of its own input. With
DDP averaging parameter gradients, this yields the gradient of the mean of the per-process
losses, exactly as if the whole global batch were on one device.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_no_grad", "gather_with_grad", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def _all_gather(x: Tensor) -> list[Tensor]:
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x)
    return out


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` from every process, concatenated on dim 0 in rank order; no gradient.

    Every process must pass a tensor of the same shape. When not distributed: ``x.detach()``
    (same values and storage, no graph, so the result behaves the same in both settings).
    """
    if world_size() == 1:
        return x.detach()
    return torch.cat(_all_gather(x.detach()), dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.n = x.shape[0]
        return torch.cat(_all_gather(x), dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        r = rank()
        return grad[r * ctx.n : (r + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` (rank order, dim 0) keeping the autograd graph for this process's slice.

    Backward all-reduces (sums) the incoming gradient over processes and returns this
    process's slice. Every process must call it (same shapes) and every process must run
    backward through it. Identity when not distributed.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
