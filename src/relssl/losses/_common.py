"""Shared helpers of ``relssl.losses``: argument checks, dtype handling, normalisation.

Every public loss

* validates its arguments and raises :class:`LossArgumentError` (a ``ValueError``) with a
  one-line message that names the function, the bad argument and what is allowed;
* computes in ``float32`` at least (``bfloat16`` / ``float16`` inputs are upcast, ``float64``
  stays ``float64``) with autocast disabled for the inputs' device, so the value is right when
  the caller runs under ``torch.autocast``;
* L2-normalises its inputs over the last dimension (rows);
* detaches every constant (queues, banks, teacher outputs, targets).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from relssl.errors import RelsslError

__all__ = ["LossArgumentError"]

_F = TypeVar("_F", bound=Callable[..., Any])

REDUCTIONS = ("mean", "sum")


class LossArgumentError(RelsslError, ValueError):
    """A loss function was called with an argument it does not accept."""


def fail(fn: str, message: str) -> LossArgumentError:
    """Build the error for function ``fn`` (raise the result)."""
    return LossArgumentError(f"{fn}: {message}")


# ----------------------------------------------------------------------------------------------
# autocast / dtype
# ----------------------------------------------------------------------------------------------


def _first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Tensor):
                    return item
    return None


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (TypeError, RuntimeError):  # pragma: no cover - very old torch / exotic devices
        return False


def full_precision(fn: _F) -> _F:
    """Run ``fn`` with autocast disabled on the device of its first tensor argument.

    The losses upcast their inputs to ``float32`` (at least) themselves; disabling autocast
    stops it from casting the matmuls back down to ``float16`` / ``bfloat16``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = _first_tensor(args, kwargs)
        if first is not None and _autocast_enabled(first.device.type):
            with torch.autocast(device_type=first.device.type, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype to compute in: the promotion of the inputs' dtypes and ``float32``."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def l2n(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Row-wise L2 normalisation of ``x`` after casting it to ``dtype``."""
    return F.normalize(x.to(dtype), dim=-1)


def reduce(values: Tensor, reduction: str) -> Tensor:
    return values.mean() if reduction == "mean" else values.sum()


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(fn: str, name: str, value: Any) -> float:
    """A finite real number > 0 (temperatures)."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise fail(fn, f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(fn: str, name: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise fail(fn, f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(fn: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """An int in ``[low, high]`` (``high=None``: no upper bound)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value < low:
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise fail(fn, f"{name} must be {allowed}, got {value!r}")
    return int(value)


def check_bool(fn: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(fn, f"{name} must be True or False, got {value!r}")
    return value


def check_choice(fn: str, name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise fail(fn, f"{name} must be one of {options}, got {value!r}")
    return value


def check_matrix(fn: str, name: str, x: Any, rows: int | None = None, dim: int | None = None,
                 min_rows: int = 1) -> Tensor:
    """A floating-point tensor of shape ``(rows, dim)`` with at least ``min_rows`` rows."""
    if not isinstance(x, Tensor):
        raise fail(fn, f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise fail(fn, f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise fail(fn, f"{name} must be 2-D (rows, D), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise fail(fn, f"{name} must have D >= 1 columns, got shape {tuple(x.shape)}")
    if rows is not None and x.shape[0] != rows:
        raise fail(fn, f"{name} must have {rows} rows to match the batch, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise fail(fn, f"{name} must have at least {min_rows} row(s), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise fail(fn, f"{name} must have D = {dim} columns to match the other inputs, "
                       f"got shape {tuple(x.shape)}")
    return x


def check_same_shape(fn: str, names: tuple[str, ...], tensors: tuple[Tensor, ...]) -> None:
    first = tuple(tensors[0].shape)
    for name, t in zip(names[1:], tensors[1:]):
        if tuple(t.shape) != first:
            raise fail(fn, f"{name} must have the same shape as {names[0]} {first}, "
                           f"got {tuple(t.shape)}")


def check_index(fn: str, name: str, idx: Any, n: int, high: int) -> Tensor:
    """An integer tensor of shape ``(n,)`` with values in ``[0, high)``."""
    if not isinstance(idx, Tensor):
        raise fail(fn, f"{name} must be a torch.Tensor of indices, got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise fail(fn, f"{name} must be an integer tensor, got dtype {idx.dtype}")
    if tuple(idx.shape) != (n,):
        raise fail(fn, f"{name} must have shape ({n},), got {tuple(idx.shape)}")
    if n > 0:
        values_hold(((idx >= 0) & (idx < high)).all(), fn, f"{name} values must lie in [0, {high})",
                    lambda: f"min {int(idx.min())} and max {int(idx.max())}")
    return idx.long()


def values_hold(ok: Tensor, fn: str, rule: str, found) -> None:
    """Check a 0-d boolean tensor computed from tensor values. On CUDA the check is a device assert
    saying ``rule`` (reading ``ok`` back would stall the GPU every step; a bad value still fails,
    asynchronously); elsewhere a ``LossArgumentError`` saying ``rule`` and ``found()`` (a callable
    that describes the bad values, called only on failure)."""
    if ok.device.type == "cuda":
        torch._assert_async(ok, f"{fn}: {rule}")
    elif not bool(ok):
        raise fail(fn, f"{rule}, got {found()}")


def check_fraction(fn: str, name: str, value: Any, n: int, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    """A number in [0, 1], or a tensor of shape ``()``, ``(n,)`` or ``(n, 1)`` with values in
    [0, 1]; returned as a detached ``(n, 1)`` tensor of ``dtype``."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.reshape(1, 1).expand(n, 1)
        elif tuple(value.shape) == (n,):
            value = value.reshape(n, 1)
        elif tuple(value.shape) != (n, 1):
            raise fail(fn, f"{name} must be a number or a tensor of shape () or ({n},), "
                           f"got shape {tuple(value.shape)}")
        value = value.detach().to(device=device, dtype=dtype)
        if n > 0:  # BSIM's lambda, pNNCLR's per-sample t: on the device on a GPU
            values_hold(((value >= 0) & (value <= 1)).all(), fn, f"{name} values must lie in [0, 1]",
                        lambda: f"min {float(value.min())} and max {float(value.max())}")
        return value
    if not _is_real(value) or not (0.0 <= float(value) <= 1.0):
        raise fail(fn, f"{name} must lie in [0, 1], got {value!r}")
    return torch.full((n, 1), float(value), dtype=dtype, device=device)


def check_noise(fn: str, name: str, noise: Any, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise fail(fn, f"{name} must be None or a floating-point tensor broadcastable to {shape}")
    try:
        ok = torch.broadcast_shapes(tuple(noise.shape), shape) == torch.Size(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise fail(fn, f"{name} must be broadcastable to {shape}, got shape {tuple(noise.shape)}")
    return noise


def drop_diagonal(x: Tensor) -> Tensor:
    """``(N, N) -> (N, N - 1)``: each row without its diagonal entry, in column order.

    Static shapes only (``x[~eye]`` would make a GPU report the mask's count to the host)."""
    n = x.shape[0]
    return x.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def with_diagonal(x: Tensor, value: float) -> Tensor:
    """``(N, N - 1) -> (N, N)``: the inverse of :func:`drop_diagonal`, ``value`` on the diagonal."""
    n = x.shape[0]
    body = torch.cat([x.reshape(n - 1, n), x.new_full((n - 1, 1), value)], dim=1).flatten()
    return torch.cat([x.new_full((1,), value), body]).view(n, n)


def offdiag_mask(n: int, device: torch.device) -> Tensor:
    """Boolean ``(n, n)`` mask that is True off the diagonal."""
    return ~torch.eye(n, dtype=torch.bool, device=device)
