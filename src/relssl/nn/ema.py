"""Momentum (EMA) teachers and their momentum schedules.

* :func:`make_teacher` -- a frozen deep copy of a student (MoCo key encoder, BYOL target,
  MSVQ teachers 1 and 2, pNNCLR target).
* :func:`ema_update` -- ``theta_t <- m * theta_t + (1 - m) * theta_s`` over parameters
  ("EMA(m)" in docs/methods/: parameters only, BN buffers of the teacher
  are never copied in MoCo/MSVQ/ASCL/MSF). ``copy_buffers=True`` also averages the floating
  buffers (BN running mean/var) and copies integer buffers: pNNCLR's smooth weight update
  applies to "every weight of f and g, including BN moving mean and variance"
  (docs/methods/pnnclr.md).
* :func:`momentum_at` -- constant momentum, or BYOL's cosine schedule
  ``tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`` generalised to ``base -> final``
  (docs/methods/byol.md; solo-learn CIFAR: 0.99 -> 1.0).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["ema_update", "make_teacher", "momentum_at"]


def make_teacher(module: nn.Module) -> nn.Module:
    """Deep copy of ``module`` with ``requires_grad=False`` on every parameter.

    The copy keeps the student's train/eval mode (teachers in these methods run in train
    mode, so their BN uses batch statistics).
    """
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _check_momentum(momentum: float) -> float:
    m = float(momentum)
    if not (0.0 <= m <= 1.0) or math.isnan(m):
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return m


def _pairs(teacher_tensors, student_tensors, what: str):
    t = list(teacher_tensors)
    s = list(student_tensors)
    if len(t) != len(s):
        raise ValueError(f"teacher and student have different numbers of {what}: {len(t)} vs {len(s)}")
    for a, b in zip(t, s):
        if a.shape != b.shape:
            raise ValueError(f"teacher/student {what} shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return t, s


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, momentum: float, copy_buffers: bool = False
) -> None:
    """In-place EMA of the student into the teacher.

    Parameters: ``theta_t <- m * theta_t + (1 - m) * theta_s`` (paired in registration order;
    the two modules must have the same structure). Buffers: untouched by default; with
    ``copy_buffers=True`` floating buffers get the same EMA and other buffers
    (``num_batches_tracked``) are copied from the student.
    """
    m = _check_momentum(momentum)
    t_params, s_params = _pairs(teacher.parameters(), student.parameters(), "parameters")
    if t_params and m != 1.0:
        s_params = [s.detach() for s in s_params]
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - m)
    if copy_buffers:
        t_bufs, s_bufs = _pairs(teacher.buffers(), student.buffers(), "buffers")
        t_float = [t for t in t_bufs if t.is_floating_point()]
        s_float = [s for t, s in zip(t_bufs, s_bufs) if t.is_floating_point()]
        if t_float and m != 1.0:
            torch._foreach_mul_(t_float, m)
            torch._foreach_add_(t_float, s_float, alpha=1.0 - m)
        for t, s in zip(t_bufs, s_bufs):
            if not t.is_floating_point():
                t.copy_(s)


_SCHEDULES = ("constant", "cosine")


def momentum_at(base: float, final: float, progress: float, schedule: str = "constant") -> float:
    """Teacher momentum at training ``progress`` in [0, 1] (= step / total_steps).

    ``"constant"``: ``base``. ``"cosine"`` (BYOL): ``final - (final - base) * (cos(pi * progress) + 1) / 2``,
    i.e. ``base`` at progress 0, ``(base + final) / 2`` at 0.5, ``final`` at 1.
    """
    base = _check_momentum(base)
    final = _check_momentum(final)
    progress = float(progress)
    if not (0.0 <= progress <= 1.0):
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule {schedule!r}; available: {', '.join(_SCHEDULES)}")
