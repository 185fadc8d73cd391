"""Backbones: torchvision ResNets with the CIFAR stem option, and small conv nets for the CPU.

Follows docs/methods/small-data-recipe.md ("Backbone ResNet-18, CIFAR stem"):
torchvision ResNet (``weights=None``, ``zero_init_residual=False``), ``conv1`` replaced by a
3x3 / stride 1 / padding 1 convolution without bias, the 3x3/2 max-pool removed for
CIFAR-sized inputs (kept for STL-10 / Tiny ImageNet: ``maxpool=True``), and ``fc``
replaced by the identity so the module returns the globally average-pooled feature
(512-d for ResNet-18/34, 2048-d for ResNet-50). SplitBatchNorm (docs/methods/small-data-recipe.md) is applied with
``bn_splits > 1``.

Because the ResNets *are* torchvision ResNets (only ``fc`` is an ``Identity``), their
state dicts are torchvision-compatible minus the ``fc.*`` keys; :func:`load_torchvision_weights`
goes the other way.

``convnet`` / ``convnet_tiny`` are small fast nets (4 blocks conv3x3-BN-ReLU, max-pool after
blocks 1-3, global average pool) used by the unit tests and the CPU budget (on 2 CPU cores the
32-256 net trains at a few hundred images/s, see docs/comparison.md); ``convnet_grid`` is the same
net with a 2x2 feature grid (the CPU demo's backbone).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision import models

from .splitbn import convert_to_split_bn

__all__ = ["BACKBONES", "ConvNet", "build_backbone", "load_torchvision_weights"]

_RESNETS = {
    "resnet18": (models.resnet18, 512),
    "resnet34": (models.resnet34, 512),
    "resnet50": (models.resnet50, 2048),
}
_CONVNETS = {
    "convnet": (32, 64, 128, 256),
    "convnet_tiny": (8, 16, 32, 64),
    "convnet_grid": (32, 64, 128, 256),
}
# feature grid per conv net: the last map is average-pooled to grid x grid and flattened (1 = global
# average pooling). convnet_grid keeps a 2x2 layout: on small centred images such as Fashion-MNIST the
# position of a part is information that global pooling throws away (chosen by
# benchmarks/cpu_budget.py: at random init 74.6% kNN against 71.3% for convnet, bank 10k / test 5k)
_CONVNET_GRID = {"convnet_grid": 2}
BACKBONES: tuple[str, ...] = tuple(_RESNETS) + tuple(_CONVNETS)


class ConvNet(nn.Module):
    """Small conv net: ``len(widths)`` blocks of conv3x3(no bias)-BN-ReLU, 2x2 max-pool after
    every block but the last, then average pooling to a ``grid`` x ``grid`` map (1: global average
    pooling), flattened to a ``widths[-1] * grid**2``-d vector.

    Meant for tests and the CPU demo, not for accuracy. Input (B, C, H, W) float, any H, W >= 8
    (pooling uses ``ceil_mode`` so odd sizes such as 28 -> 14 -> 7 -> 4 never reach zero).
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128, 256), grid: int = 1) -> None:
        super().__init__()
        if len(widths) < 1:
            raise ValueError("ConvNet needs at least one width")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(widths):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        if grid < 1:
            raise ValueError(f"ConvNet grid must be >= 1, got {grid}")
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.feat_dim = int(widths[-1]) * grid * grid
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _resnet(name: str, in_channels: int, cifar_stem: bool, maxpool: bool) -> nn.Module:
    ctor, _ = _RESNETS[name]
    net = ctor(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # same init torchvision uses for its own convolutions
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if not maxpool:
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def build_backbone(
    name: str,
    in_channels: int = 3,
    cifar_stem: bool = True,
    maxpool: bool = False,
    bn_splits: int = 1,
) -> tuple[nn.Module, int]:
    """Build a backbone mapping ``(B, C, H, W)`` float images to ``(B, feat_dim)`` pooled features.

    Args:
        name: one of :data:`BACKBONES` (``resnet18``, ``resnet34``, ``resnet50``, ``convnet``,
            ``convnet_tiny``, ``convnet_grid``: convnet's layers with a 2x2 feature grid).
        in_channels: input channels (1 for Fashion-MNIST / grey MedMNIST, 3 for RGB).
        cifar_stem: ResNets only: ``conv1`` = 3x3 stride 1 pad 1 no bias (docs/methods/small-data-recipe.md);
            False keeps torchvision's 7x7/2 stem (rebuilt only if ``in_channels != 3``).
        maxpool: ResNets only: keep the stem's 3x3/2 max-pool (True: STL-10, Tiny ImageNet,
            ImageNet-style stems) or replace it by ``Identity`` (False: CIFAR-sized inputs).
        bn_splits: > 1 converts every ``BatchNorm2d`` into ``SplitBatchNorm2d(num_splits=bn_splits)``.

    Returns:
        ``(module, feat_dim)``.
    """
    if name in _RESNETS:
        net = _resnet(name, in_channels, cifar_stem, maxpool)
        dim = _RESNETS[name][1]
    elif name in _CONVNETS:
        net = ConvNet(in_channels, _CONVNETS[name], grid=_CONVNET_GRID.get(name, 1))
        dim = net.feat_dim
    else:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    if int(bn_splits) < 1:
        raise ValueError(f"bn_splits must be >= 1, got {bn_splits}")
    if bn_splits > 1:
        net = convert_to_split_bn(net, bn_splits)
    return net, dim


def load_torchvision_weights(backbone: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a torchvision ResNet state-dict file into ``backbone`` (``fc.*`` keys ignored).

    The file is read with ``torch.load(weights_only=True)``; a dict holding the weights under
    ``"state_dict"`` is unwrapped. Apart from ``fc``, loading is strict: missing keys,
    unexpected keys and shape mismatches (typically ``conv1`` 7x7 weights into a CIFAR-stem
    3x3 backbone, or a different ``in_channels``) raise a ``ValueError`` that lists them.
    Returns the backbone.
    """
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not (k == "fc" or k.startswith("fc."))}
    own = backbone.state_dict()
    own = {k: v for k, v in own.items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs backbone {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}")
        if mismatched:
            parts.append(f"shape mismatches: {mismatched[:10]}")
        hint = ""
        if any(m.startswith("conv1.weight") for m in mismatched):
            hint = " (conv1 differs: ImageNet weights need cifar_stem=False and in_channels=3)"
        raise ValueError(f"cannot load {path} into the backbone: " + "; ".join(parts) + hint)
    backbone.load_state_dict(state, strict=False)
    return backbone
