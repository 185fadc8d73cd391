"""Shuffle-BN for teacher / key encoders (docs/methods/small-data-recipe.md).

MoCo's Shuffle-BN: permute the batch before the teacher forward and un-permute its output, so
that with per-device BN (or :class:`~relssl.nn.splitbn.SplitBatchNorm2d`) the samples sharing
batch statistics in the teacher differ from those sharing them in the student. For a module
that treats samples independently the output is unchanged.

Across processes (MoCo's ``_batch_shuffle_ddp``): the global batch is all-gathered, one
permutation drawn on rank 0 is broadcast, each process forwards its slice of the permuted
global batch, the outputs are all-gathered and un-permuted, and each process keeps its own
rows. This is meant for teachers (no gradient crosses processes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .distributed import gather_no_grad, rank, world_size

__all__ = ["shuffle_forward", "teacher_forward"]


def _randperm(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def _inverse(perm: Tensor) -> Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def shuffle_forward(
    module: nn.Module | Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """``module(x)`` computed on a randomly permuted batch, returned in the original order.

    Args:
        module: any callable mapping (B, ...) -> (B, ...) (typically the teacher backbone+head).
        x: input batch (B, ...).
        generator: RNG for the permutation (reproducible runs); a generator on another device
            than ``x`` is fine (the permutation is moved). With ``torch.distributed`` initialised
            the permutation is drawn on rank 0 and broadcast.
    """
    if world_size() > 1:
        return _shuffle_forward_distributed(module, x, generator)
    perm = _randperm(x.shape[0], x.device, generator)
    out = module(x[perm])
    return out[_inverse(perm)]


def _shuffle_forward_distributed(module: Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Shuffle over the global batch (every process must pass the same batch size)."""
    b = x.shape[0]
    r = rank()
    x_all = gather_no_grad(x)
    perm = _randperm(x_all.shape[0], x.device, generator)
    dist.broadcast(perm, src=0)
    out_local = module(x_all[perm[r * b : (r + 1) * b]])
    out_all = gather_no_grad(out_local)
    inv = _inverse(perm)
    return out_all[inv[r * b : (r + 1) * b]]


@torch.no_grad()
def teacher_forward(teacher: nn.Module, x: Tensor, generator: torch.Generator | None, shuffle_bn: bool) -> Tensor:
    """A teacher's output for ``x`` with no gradient, through :func:`shuffle_forward` when
    ``shuffle_bn`` (the permutation drawn from ``generator``), else a plain forward."""
    return shuffle_forward(teacher, x, generator) if shuffle_bn else teacher(x)
