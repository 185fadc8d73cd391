"""The NaN guard of a training run (``trainer.nan_policy``).

``stop`` (default): each step's loss is copied to the host without waiting (on CUDA: into pinned
memory, behind an event) and checked at the start of the next step, at the end of every epoch
(before its checkpoints are written) and at the end of training; a non-finite loss raises
:class:`relssl.errors.TrainingError` naming the step and the last good checkpoint, on every rank
together. ``skip``: the step's loss is read at once; a non-finite one is skipped on every rank
(under DDP a zero loss still reaches every parameter, so the gradient all-reduce completes, and
the update is dropped before the optimizer step).
"""

from __future__ import annotations

import torch

from relssl.errors import TrainingError


class LossGuard:
    """The loss checks of one :class:`relssl.engine.module.PretrainModule`."""

    def __init__(self, method_name: str) -> None:
        self.method_name = method_name
        self._pending: torch.Tensor | None = None  # the last step's loss, not yet checked
        self._pending_step = 0
        self._host: torch.Tensor | None = None  # pinned host copy of a CUDA loss
        self._event = None

    def defer(self, loss: torch.Tensor, step: int) -> None:
        """Start copying ``loss`` to the host without waiting; :meth:`check` reads it later.

        ``.item()`` on a CUDA tensor would wait for everything queued so far, the backward pass and
        optimizer step included, and leave the GPU idle while the next step's views are launched.
        Waiting on an event recorded right after the copy blocks only until the loss itself exists.
        """
        if loss.device.type != "cuda":
            self._pending = loss.detach()
        else:
            if self._host is None:
                self._host = torch.empty((), dtype=torch.float32, pin_memory=True)
                self._event = torch.cuda.Event()
            self._host.copy_(loss.detach().float(), non_blocking=True)
            self._event.record()
            self._pending = self._host
        self._pending_step = step

    def check(self, trainer) -> None:
        """Raise :class:`TrainingError` if the deferred loss is not finite (on every rank together)."""
        if self._pending is None:
            return
        if self._pending is self._host:
            self._event.synchronize()  # the loss is computed; later work stays queued
        finite = bool(torch.isfinite(self._pending).item())
        self._pending = None
        if trainer.world_size > 1:
            # every rank stops together: one stopping alone would leave the others waiting in a collective
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            cb = trainer.checkpoint_callback  # last.ckpt's: no monitor, so its file is its "best" path
            ckpt = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "") or "none yet"
            raise TrainingError(
                f"non-finite loss at step {self._pending_step} ({self.method_name}); last good checkpoint: {ckpt}; "
                "lower optim.lr, check the data, or set trainer.nan_policy=skip"
            )

    @staticmethod
    def finite_now(loss: torch.Tensor, trainer) -> bool:
        """``skip`` policy: whether this step's loss is finite on every rank (reads it now)."""
        finite = bool(torch.isfinite(loss).item())
        if trainer.world_size > 1:  # all ranks skip together: one skipping alone hangs DDP
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        return finite
