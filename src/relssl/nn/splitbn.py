"""Split batch normalisation: simulate multi-GPU BatchNorm on one device.

Follows docs/methods/small-data-recipe.md ("SplitBatchNorm (bn_splits = 8)"),
the trick of the MoCo CIFAR-10 demo that MSVQ, ASCL and the pc-cp baselines inherit:
in training the batch of N samples is cut into ``num_splits`` groups that are
normalised with their own batch statistics, as if each group sat on its own GPU
with plain (unsynchronised) BatchNorm. Combined with Shuffle-BN
(:func:`relssl.nn.shuffle.shuffle_forward`) this stops the key/teacher encoder
from "cheating" through shared batch statistics.

Grouping follows the MoCo demo exactly: the tensor ``(N, C, H, W)`` is viewed as
``(N / S, S * C, H, W)``, so group ``s`` holds samples ``s, s + S, s + 2S, ...``
(interleaved, not contiguous chunks). Running statistics are tracked per group
and averaged over the groups after each training forward. In eval mode the layer
is an ordinary ``BatchNorm2d`` using the (averaged) running statistics.

The layer adds no parameters or buffers: its state dict has exactly the keys of
``nn.BatchNorm2d``, so a checkpoint trained with split BN loads into a plain
torchvision ResNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SplitBatchNorm2d", "convert_to_split_bn"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises ``num_splits`` interleaved groups of the batch separately.

    Args:
        num_features: channels C.
        num_splits: number of groups S (>= 1). ``1`` is plain BatchNorm.
        eps, momentum, affine, track_running_stats: as for :class:`torch.nn.BatchNorm2d`.

    Training: the batch size must be divisible by ``num_splits`` (``ValueError`` otherwise).
    Group ``s`` = samples ``s::num_splits``. The running statistics are updated per group
    (with the usual momentum) and then replaced by their mean over the groups.
    Eval: ordinary BatchNorm with the running statistics.
    """

    def __init__(
        self,
        num_features: int,
        num_splits: int = 1,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            device=device,
            dtype=dtype,
        )
        if int(num_splits) < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = int(num_splits)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (same name as nn.BatchNorm2d)
        use_batch_stats = self.training or not self.track_running_stats
        if self.num_splits == 1 or not use_batch_stats:
            return super().forward(input)
        self._check_input_dim(input)
        n, c, h, w = input.shape
        s = self.num_splits
        if n % s != 0:
            raise ValueError(
                f"SplitBatchNorm2d: batch size {n} is not divisible by num_splits={s}"
            )

        # Momentum handling as in nn.BatchNorm2d (momentum=None -> cumulative average).
        factor = 0.0 if self.momentum is None else self.momentum
        update_stats = self.training and self.track_running_stats
        if update_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)

        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        if update_stats:
            mean_s = self.running_mean.repeat(s)
            var_s = self.running_var.repeat(s)
        else:  # track_running_stats=False: pure batch statistics, nothing to update
            mean_s = var_s = None

        channels_last = input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) \
            and not input.is_contiguous()
        # (N, C, H, W) -> (N/S, S*C, H, W): channel j*C + c of the view holds channel c of samples j::S.
        out = F.batch_norm(
            input.reshape(n // s, s * c, h, w),
            mean_s,
            var_s,
            weight,
            bias,
            True,
            factor,
            self.eps,
        ).reshape(n, c, h, w)
        if update_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean_s.view(s, c).mean(dim=0))
                self.running_var.copy_(var_s.view(s, c).mean(dim=0))
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def convert_to_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a :class:`SplitBatchNorm2d`.

    Affine parameters, running statistics and hyper-parameters are carried over, so the
    converted network computes the same function in eval mode. Existing
    ``SplitBatchNorm2d`` layers get their ``num_splits`` updated. Works in place on the
    children and returns the (possibly new) root module, like
    ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    """
    if int(num_splits) < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if isinstance(module, SplitBatchNorm2d):
        module.num_splits = int(num_splits)
        return module
    if isinstance(module, nn.BatchNorm2d):
        p = next(iter(module.parameters()), None)
        ref = p if p is not None else module.running_mean
        new = SplitBatchNorm2d(
            module.num_features,
            num_splits=num_splits,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_to_split_bn(child, num_splits)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
