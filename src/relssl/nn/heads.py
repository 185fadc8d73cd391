"""MLP projection / prediction heads.

One builder, :func:`mlp`, plus presets with the shapes the official code bases use (docs/methods/):

* :func:`moco_head` -- MoCo v2 / MSVQ / ASCL projector ``Linear(d, 2048) -> ReLU -> Linear(2048, 128)``,
  biases on, no BN (docs/methods/small-data-recipe.md, "Projection head").
* :func:`simclr_head` -- SimCLR v1 ``Linear(d, 2048) -> BN -> ReLU -> Linear(2048, 128)``
  (docs/methods/simclr.md).
* :func:`byol_head` -- BYOL projector/predictor ``Linear(d, 4096) -> BN -> ReLU -> Linear(4096, 256)`` (docs/methods/byol.md).
* :func:`nnclr_projector` -- 3 layers ``[2048, 2048, 256]``, BN after every layer, ReLU after all but
  the last; :func:`nnclr_predictor` -- ``[4096, 256]`` BN+ReLU on the hidden layer (docs/methods/nnclr.md).
* :func:`wcl_head` -- WCL ``Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear``, bias on, no BN at
  the end (docs/methods/wcl.md; paper H=2048, D=128; released code H=4096, D=256).

The returned ``nn.Sequential`` holds the layers in order (no nested blocks), so
``head[0]`` is the first Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = [
    "byol_head",
    "mlp",
    "moco_head",
    "nnclr_predictor",
    "nnclr_projector",
    "simclr_head",
    "wcl_head",
]


def mlp(
    dims: Sequence[int],
    hidden_bn: bool = False,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    bias: bool = True,
) -> nn.Sequential:
    """Multi-layer perceptron ``dims = [in, hidden..., out]``.

    Each hidden layer is ``Linear -> (BatchNorm1d if hidden_bn) -> ReLU``; the last layer is
    ``Linear -> (BatchNorm1d(affine=last_bn_affine) if last_bn)``. ``bias`` applies to every
    Linear. ``len(dims) == 2`` gives a single (optionally batch-normalised) Linear.
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least [in, out] dims, got {dims}")
    if any(d < 1 for d in dims):
        raise ValueError(f"mlp dims must be positive, got {dims}")
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if last:
            if last_bn:
                layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_bn_affine))
        else:
            if hidden_bn:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def moco_head(in_dim: int, hidden: int = 2048, out: int = 128) -> nn.Sequential:
    """MoCo v2 projector (MSVQ, ASCL, pc-cp baselines): ``Linear -> ReLU -> Linear``, no BN."""
    return mlp([in_dim, hidden, out])


def simclr_head(in_dim: int, hidden: int = 2048, out: int = 128) -> nn.Sequential:
    """SimCLR v1 projector: ``Linear -> BN -> ReLU -> Linear``."""
    return mlp([in_dim, hidden, out], hidden_bn=True)


def byol_head(in_dim: int, hidden: int = 4096, out: int = 256) -> nn.Sequential:
    """BYOL projector or predictor: ``Linear -> BN -> ReLU -> Linear``."""
    return mlp([in_dim, hidden, out], hidden_bn=True)


def nnclr_projector(in_dim: int, hidden: int = 2048, out: int = 256) -> nn.Sequential:
    """NNCLR projector: 3 Linear layers, BN after each, ReLU after all but the last."""
    return mlp([in_dim, hidden, hidden, out], hidden_bn=True, last_bn=True)


def nnclr_predictor(in_dim: int = 256, hidden: int = 4096, out: int = 256) -> nn.Sequential:
    """NNCLR predictor: ``Linear -> BN -> ReLU -> Linear``."""
    return mlp([in_dim, hidden, out], hidden_bn=True)


def wcl_head(in_dim: int, hidden: int = 2048, out: int = 128) -> nn.Sequential:
    """WCL instance/graph head: ``Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear``."""
    return mlp([in_dim, hidden, hidden, out], hidden_bn=True)
