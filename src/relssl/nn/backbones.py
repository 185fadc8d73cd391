"""Backbones: relssl's built-in ResNets and small conv nets, and the entry point for any other
architecture (``torchvision:<model>``, ``timm:<model>``, registered factories, import paths, a
module passed in: :mod:`relssl.nn.zoo`).

Built-ins: torchvision ResNets with the CIFAR stem option, and small conv nets for the CPU.

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
net with a 2x2 feature grid (the CPU comparison's backbone), ``convnet_grid_small`` that at half width
(the CPU demo's). ``backbone.kwargs`` ``widths`` and ``grid`` set any other widths and grid.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .splitbn import convert_to_split_bn
from .zoo import check_library_name, factory_model, split_name, timm_model, torchvision_model

__all__ = ["BACKBONES", "Backbone", "ConvNet", "build_backbone", "check_backbone_name", "check_sizes", "load_weights",
           "make_backbone", "probe_features", "read_state_dict"]

log = logging.getLogger("relssl")

# torchvision's constructor name and feature width. torchvision is imported where a ResNet is built, not
# here: importing it costs seconds on a small CPU (it loads all its models and ops), which every command
# would pay before it could even print --help or reject a bad config
_RESNETS = {
    "resnet18": ("resnet18", 512),
    "resnet34": ("resnet34", 512),
    "resnet50": ("resnet50", 2048),
}
_CONVNETS = {
    "convnet": (32, 64, 128, 256),
    "convnet_tiny": (8, 16, 32, 64),
    "convnet_grid": (32, 64, 128, 256),
    "convnet_grid_small": (16, 32, 64, 128),
}
# feature grid per conv net: the last map is average-pooled to grid x grid and flattened (1 = global
# average pooling). convnet_grid keeps a 2x2 layout: on small centred images such as Fashion-MNIST the
# position of a part is information that global pooling throws away (chosen by
# benchmarks/cpu_budget.py: at random init 74.6% kNN against 71.3% for convnet, bank 10k / test 5k)
# convnet_grid_small: the same at half width (a quarter of the multiply-adds; 2.4-2.9x the steps per second
# on 2 CPU cores): the CPU demo's backbone, which learned as much in 3 epochs as convnet_grid
_CONVNET_GRID = {"convnet_grid": 2, "convnet_grid_small": 2}
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
    from torchvision import models

    net = getattr(models, _RESNETS[name][0])(weights=None)
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


@dataclass
class Backbone:
    """A built backbone: the module, its feature dimension, and the JSON-able ``arch`` that rebuilds it
    (``library`` = relssl | torchvision | timm | registered | import | object, ``model``, ``kwargs``,
    ``in_channels``, ``head``: the removed classifier's path, and what relssl changed)."""

    module: nn.Module
    feat_dim: int
    arch: dict = field(default_factory=dict)


def check_backbone_name(name: str) -> None:
    """A one-line ``ValueError`` for a ``backbone.name`` that names nothing (no model is built)."""
    family, model = split_name(name)
    if family == "builtin" and name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; built-in: {', '.join(BACKBONES)}; or torchvision:<model>, "
                         "timm:<model>, package.module:factory (relssl list shows the families)")
    if family in ("torchvision", "timm"):
        check_library_name(family, model)


def check_builtin_kwargs(name: str, kwargs: dict) -> None:
    """A one-line ``ValueError`` for ``backbone.kwargs`` a built-in cannot take (no model is built):
    the conv nets take ``widths`` and ``grid``, the ResNets nothing; other families are checked when built."""
    if split_name(name)[0] != "builtin" or not kwargs:
        return
    if name in _CONVNETS:
        _convnet_options(name, kwargs)
    elif name in _RESNETS:
        raise ValueError(f"backbone {name} takes no backbone.kwargs (got {sorted(kwargs)}); they are for the conv nets "
                         "(widths, grid), torchvision:, timm: and your own factories")


def _convnet_options(name: str, kwargs: dict) -> tuple[tuple[int, ...], int]:
    """The widths and feature grid of conv net ``name``, its defaults overridden by ``backbone.kwargs``
    (``widths``: a list of channel counts, one per block; ``grid``: the pooled map's side)."""
    unknown = sorted(set(kwargs) - {"widths", "grid"})
    if unknown:
        raise ValueError(f"backbone {name} takes backbone.kwargs widths and grid only (got {unknown})")
    widths = kwargs.get("widths", _CONVNETS[name])
    if (not isinstance(widths, (list, tuple)) or not widths
            or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        raise ValueError(f"backbone {name}: backbone.kwargs.widths must be a list of positive integers, one per block "
                         f"(e.g. [16,32,64,128]), got {widths!r}")
    grid = kwargs.get("grid", _CONVNET_GRID.get(name, 1))
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise ValueError(f"backbone {name}: backbone.kwargs.grid must be an integer >= 1 (1 = global average pooling), "
                         f"got {grid!r}")
    return tuple(widths), grid


def _builtin(name: str, in_channels: int, cifar_stem: bool, maxpool: bool, kwargs: dict) -> tuple[nn.Module, dict]:
    check_builtin_kwargs(name, kwargs)
    if name in _RESNETS:
        net = _resnet(name, in_channels, cifar_stem, maxpool)
        head = "fc"
    elif name in _CONVNETS:
        widths, grid = _convnet_options(name, kwargs)
        net = ConvNet(in_channels, widths, grid=grid)
        head = None
    else:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    return net, {"library": "relssl", "model": name, "kwargs": kwargs, "in_channels": in_channels, "head": head,
                 "cifar_stem": bool(cifar_stem) and name in _RESNETS, "maxpool_removed": not maxpool and name in _RESNETS}


def probe_features(net: nn.Module, in_channels: int, size: int, name: str) -> int:
    """Run ``net`` (eval mode, no grad, CPU-cheap batch of 2 from a private generator: the global
    random state is untouched) on ``size``-px images; returns the feature dimension, or raises a
    one-line ``ValueError`` saying what to set."""
    gen = torch.Generator().manual_seed(0)
    param = next(net.parameters(), None)
    x = torch.randn(2, in_channels, size, size, generator=gen)
    if param is not None:
        x = x.to(param.device, param.dtype)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as err:  # noqa: BLE001 - any architecture's own error, turned into one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        if hasattr(net, "conv_proj") and hasattr(net, "image_size"):  # torchvision's ViT: the patch is in its name
            hint = (f"set backbone.kwargs.image_size={size} (the patch stays {net.patch_size} px), or use a timm ViT, "
                    "which relssl sizes for the crop (e.g. timm:vit_tiny_patch16_224)")
        elif hasattr(net, "patch_embed"):
            hint = "set backbone.kwargs img_size and patch_size (a patch that divides the size), or data.crop_size"
        elif hasattr(net, "maxpool") and hasattr(net, "conv1"):
            hint = "set backbone.cifar_stem=true and backbone.maxpool=false for small images, or a larger data.crop_size"
        else:
            hint = "set data.crop_size / data.eval_size to a size it takes, or its backbone.kwargs"
        raise ValueError(f"backbone {name} cannot take {size}-px images with {in_channels} channel(s) ({first}); {hint}") from None
    finally:
        net.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"backbone {name} must return one feature vector per image, shape (batch, dim); it returned "
                         f"{shape}: end it with pooling and a flatten (e.g. nn.AdaptiveAvgPool2d(1), nn.Flatten())")
    return int(out.shape[1])


def _built_size(net: nn.Module) -> int:
    """The image size a model is built for (a timm or torchvision ViT's), else 32."""
    size = getattr(getattr(net, "patch_embed", None), "img_size", None) or getattr(net, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if isinstance(size, int) and size > 0 else 32


def check_sizes(net: nn.Module, name: str, in_channels: int, sizes: Sequence[int]) -> int:
    """Run a backbone on every image size it will see; returns its feature dim (one-line errors)."""
    dims = {probe_features(net, in_channels, s, name) for s in dict.fromkeys(sizes)}
    if len(dims) > 1:
        raise ValueError(f"backbone {name} gives features of different sizes {sorted(dims)} at the image sizes "
                         f"{list(dict.fromkeys(sizes))}; end it with global pooling, or set data.eval_size to the crop size")
    return dims.pop()


def make_backbone(
    name: str,
    in_channels: int = 3,
    cifar_stem: bool = True,
    maxpool: bool = False,
    bn_splits: int = 1,
    kwargs: dict | None = None,
    image_size: int | None = None,
    eval_size: int | None = None,
    module: nn.Module | None = None,
) -> Backbone:
    """Build (or take) a backbone mapping ``(B, C, H, W)`` float images to ``(B, feat_dim)`` features.

    Args:
        name: a built-in (:data:`BACKBONES`: ``resnet18/34/50``, ``convnet``, ``convnet_tiny``,
            ``convnet_grid``, ``convnet_grid_small``), ``torchvision:<model>``, ``timm:<model>``, a name registered with
            :func:`relssl.nn.register_backbone`, or ``package.module:factory``.
        in_channels: input channels (1 for Fashion-MNIST / grey MedMNIST, 3 for RGB).
        cifar_stem: ResNet-like models only: ``conv1`` = 3x3 stride 1 pad 1 no bias;
            False keeps the model's own stem (rebuilt only if ``in_channels`` differs).
        maxpool: ResNet-like models only: keep the stem's 3x3/2 max-pool (True: STL-10, Tiny
            ImageNet, ImageNet) or replace it by ``Identity`` (False: CIFAR-sized inputs).
        bn_splits: > 1 converts every ``BatchNorm2d`` into ``SplitBatchNorm2d(num_splits=bn_splits)``.
        kwargs: keyword arguments of the model's constructor (torchvision / timm / factory); for the
            conv nets ``widths`` (channels per block) and ``grid`` (side of the pooled feature map).
        image_size: the training crop: ViTs are sized for it, and the model is run once on it
            (and on ``eval_size``) so that a size it cannot take fails here, in one line.
        module: a module of your own (``name`` is then only its label).

    Returns:
        a :class:`Backbone`.
    """
    if int(bn_splits) < 1:
        raise ValueError(f"bn_splits must be >= 1, got {bn_splits}")
    kwargs = dict(kwargs or {})
    if module is not None:
        net = module
        arch = {"library": "object", "model": f"{type(module).__module__}.{type(module).__qualname__}",
                "kwargs": {}, "in_channels": in_channels}
        name = f"object:{arch['model']}"
    else:
        family, model = split_name(name)
        if family == "builtin":
            net, arch = _builtin(name, in_channels, cifar_stem, maxpool, kwargs)
        elif family == "torchvision":
            net, arch = torchvision_model(model, in_channels, cifar_stem, maxpool, kwargs)
        elif family == "timm":
            net, arch = timm_model(model, in_channels, cifar_stem, maxpool, kwargs, image_size, eval_size)
        elif family == "object":
            raise ValueError(f"backbone {name} was a module passed to pretrain() as a Python object, which a name cannot "
                             "rebuild: pass a new instance (backbone=...), or train with a factory (package.module:factory)")
        else:
            net, arch = factory_model(family, model, in_channels, kwargs)
    if image_size:
        dim = check_sizes(net, name, in_channels, [image_size] + ([eval_size] if eval_size else []))
    elif module is None and arch["library"] == "relssl":
        dim = _RESNETS[name][1] if name in _RESNETS else net.feat_dim
    else:  # no image size given (a rebuild from a checkpoint or an export): the size the model is built for
        dim = probe_features(net, in_channels, _built_size(net), name)
    if bn_splits > 1:
        if not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
            log.warning("backbone.bn_splits=%d has no effect: backbone %s has no BatchNorm2d", bn_splits, name)
        net = convert_to_split_bn(net, bn_splits)
    return Backbone(net, dim, arch)


def build_backbone(name: str, in_channels: int = 3, cifar_stem: bool = True, maxpool: bool = False,
                   bn_splits: int = 1, **options) -> tuple[nn.Module, int]:
    """:func:`make_backbone` as ``(module, feat_dim)`` (``options``: its other arguments)."""
    b = make_backbone(name, in_channels, cifar_stem, maxpool, bn_splits, **options)
    return b.module, b.feat_dim


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (``.pth`` / ``.pt`` / ``.bin``,
    read with ``weights_only=True``: loading never runs code); a dict holding the weights under
    ``state_dict`` or ``model`` is unwrapped, and a ``module.`` prefix on every key (a DDP save) is removed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"backbone.weights file {path} does not exist")
    if not path.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"backbone.weights file {path} must be one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle / zip / safetensors errors, as one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ValueError(f"cannot read backbone.weights file {path} ({first}); it must be a state dict saved with "
                         "torch.save or safetensors") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"backbone.weights file {path} does not hold a state dict (name -> tensor)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _head_prefixes(head) -> tuple[str, ...]:
    heads = [head] if isinstance(head, str) else list(head or [])
    return tuple(h + "." for h in heads) + tuple(heads)


def load_weights(backbone: nn.Module, path: str | os.PathLike, head=None) -> nn.Module:
    """Load a state-dict file (torchvision, timm or relssl-export layout) into ``backbone``.

    Keys of the removed classifier (``head``: a path or a list of paths, e.g. ``"fc"``) are
    ignored; otherwise loading is strict, and missing keys, unexpected keys and shape mismatches
    (typically ImageNet's 7x7 ``conv1`` into a CIFAR-stem 3x3 one, or 3 input channels into 1)
    raise one ``ValueError`` that lists them. Returns the backbone."""
    state = read_state_dict(path)
    prefixes = _head_prefixes(head)
    state = {k: v for k, v in state.items() if not (prefixes and (k in prefixes or k.startswith(prefixes)))}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs backbone {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:5]}")
        if mismatched:
            parts.append(f"shape mismatches: {mismatched[:5]}")
        hint = ""
        if any(m.startswith("conv1.weight") for m in mismatched):
            hint = " (conv1 differs: ImageNet weights need backbone.cifar_stem=false and 3-channel images)"
        elif mismatched:
            hint = " (the file is for another size or number of channels of this architecture)"
        elif missing and unexpected:
            hint = " (the file is of another architecture, or its keys have another prefix)"
        raise ValueError(f"cannot load {os.fspath(path)} into the backbone: " + "; ".join(parts) + hint)
    backbone.load_state_dict(state, strict=True)
    return backbone
