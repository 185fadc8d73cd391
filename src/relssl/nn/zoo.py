"""Backbones from other libraries and from the user: ``torchvision:<model>``, ``timm:<model>``,
registered factories and ``package.module:factory`` import paths.

Every builder returns a module that maps ``(B, C, H, W)`` images to ``(B, D)`` features and a
*arch*: a JSON-able description (library, model, constructor keyword arguments, what relssl
changed) that :mod:`relssl.evaluate.export` writes beside the weights, so that an exported file
loads into the library's own constructor with no key renaming.

What relssl changes in a library model, and nothing else:

* the classifier is removed (timm: ``num_classes=0``; torchvision: the last ``nn.Linear`` of the
  model's ``fc`` / ``classifier`` / ``head`` / ``heads`` becomes ``nn.Identity``, and so do the
  dropout layers in the same head), so the output is the pooled pre-logit feature;
* the input channels (timm: ``in_chans``; torchvision: the first ``Conv2d`` is rebuilt with the
  dataset's channels when they are not 3);
* ResNet-like models (a ``conv1`` convolution and a ``maxpool`` attribute: torchvision's
  ResNet / ResNeXt / Wide ResNet, timm's ResNets with the plain stem) get the CIFAR stem
  (3x3 stride-1 ``conv1``) when ``cifar_stem`` is on, and lose the stem's max-pool when
  ``maxpool`` is off;
* Vision Transformers from timm (a ``patch_embed`` with an image size) are built for the crop
  size: ``img_size`` = the crop, and when the model's patch would leave fewer than 7 x 7 patches,
  ``patch_size`` = the largest of 16, 8, 4, 2 that divides the crop and leaves at least 7 x 7
  (32 px -> 4, 28 px -> 4, 64 px -> 8, 96 px -> 8). Keyword arguments the user sets win.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable

from torch import nn

__all__ = ["BACKBONE_FACTORIES", "FAMILIES", "register_backbone", "split_name", "torchvision_model",
           "timm_model", "factory_model", "vit_patch_size", "check_library_name"]

FAMILIES = {
    "torchvision": "torchvision:<model>: any torchvision classification model (torchvision.models.list_models())",
    "timm": "timm:<model>: any timm model (pip install 'relssl[timm]'; timm.list_models())",
    "registered": "<name>: a factory registered with relssl.nn.register_backbone",
    "import": "package.module:factory: a class or function that returns the module (called with backbone.kwargs)",
}

BACKBONE_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
"""Factories registered with :func:`register_backbone` (name -> callable)."""

_HEAD_ATTRS = ("fc", "classifier", "head", "heads")


def register_backbone(name: str):
    """Decorator: make ``factory`` available as ``backbone.name=<name>``.

    ``factory(**backbone.kwargs)`` must return an ``nn.Module`` mapping ``(B, C, H, W)`` images to
    ``(B, D)`` features; if it has an ``in_channels`` parameter, the dataset's channels are passed.
    Registration lives in the process: for the command line, use the ``package.module:factory``
    form instead (it is imported by name)."""
    if not name or ":" in name:
        raise ValueError(f"a registered backbone name must be non-empty and have no ':' (got {name!r})")

    def deco(factory):
        BACKBONE_FACTORIES[name] = factory
        return factory

    return deco


def split_name(name: str) -> tuple[str, str]:
    """``backbone.name`` -> (family, model): ``("torchvision", "resnet18")``, ``("timm", ...)``,
    ``("object", "pkg.Class")`` (a module passed to ``pretrain``), ``("import", "pkg.mod:attr")``,
    ``("registered", name)``, or ``("builtin", name)``."""
    if ":" in name:
        prefix, rest = name.split(":", 1)
        if prefix in ("torchvision", "timm", "object"):
            return prefix, rest
        return "import", name
    if name in BACKBONE_FACTORIES:
        return "registered", name
    return "builtin", name


def check_library_name(family: str, model: str) -> None:
    """A one-line ``ValueError`` if ``model`` is not a model of ``family``'s library (cheap: no build)."""
    if not model:
        raise ValueError(f"backbone.name={family}: names no model; for example {family}:resnet18")
    if family == "torchvision":
        from torchvision import models

        names = models.list_models(module=models)
        if model not in names:
            close = difflib.get_close_matches(model, names, n=5, cutoff=0.6)
            raise ValueError(f"torchvision has no classification model {model!r}"
                             + (f"; close: {', '.join(close)}" if close else "")
                             + " (torchvision.models.list_models() lists them)")
    elif family == "timm":
        timm = _import_timm(model)
        if not timm.is_model(model):
            close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"timm has no model {model!r}" + (f"; close: {', '.join(close)}" if close else "")
                             + " (timm.list_models('*vit*') searches)")


def _import_timm(model: str):
    try:
        import timm
    except ImportError:
        raise ValueError(f"backbone.name=timm:{model} needs timm, which is not installed: "
                         "pip install 'relssl[timm]'") from None
    return timm


def _kwargs_of(ctor) -> set[str] | None:
    """The keyword parameters ``ctor`` takes (None: it takes ``**kwargs``)."""
    try:
        params = inspect.signature(ctor).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _conv_like(conv: nn.Conv2d, in_channels: int, **changes) -> nn.Conv2d:
    """A new ``Conv2d`` like ``conv`` with ``in_channels`` and ``changes`` (kernel_size, stride, padding)."""
    args = dict(out_channels=conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode)
    args.update(changes)
    new = nn.Conv2d(in_channels, **args)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


def _resnet_like(net: nn.Module) -> bool:
    return isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool")


def _small_image_stem(net: nn.Module, cifar_stem: bool, maxpool: bool) -> dict:
    """CIFAR stem / no max-pool on a ResNet-like model; returns what changed."""
    changed = {"cifar_stem": False, "maxpool_removed": False}
    if not _resnet_like(net):
        return changed
    if cifar_stem:
        net.conv1 = _conv_like(net.conv1, net.conv1.in_channels, kernel_size=3, stride=1, padding=1, bias=False)
        changed["cifar_stem"] = True
    if not maxpool and not isinstance(net.maxpool, nn.Identity):
        net.maxpool = nn.Identity()
        changed["maxpool_removed"] = True
    return changed


def _remove_torchvision_head(net: nn.Module, model: str) -> str:
    """Replace the classifier's last ``nn.Linear`` (and the head's dropouts) by ``nn.Identity``;
    returns the dotted path of that Linear."""
    for attr in _HEAD_ATTRS:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return attr
        if isinstance(head, nn.Sequential):
            linears = [name for name, m in head.named_children() if isinstance(m, nn.Linear)]
            if linears:
                for name, m in list(head.named_children()):
                    if isinstance(m, nn.Dropout) or name == linears[-1]:
                        setattr(head, name, nn.Identity())
                return f"{attr}.{linears[-1]}"
    raise ValueError(f"torchvision:{model} has no Linear classifier in {'/'.join(_HEAD_ATTRS)} that relssl can "
                     "remove; build it yourself and pass the module (pretrain(cfg, backbone=...))")


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)


def torchvision_model(model: str, in_channels: int, cifar_stem: bool, maxpool: bool,
                      kwargs: dict) -> tuple[nn.Module, dict]:
    """``torchvision.models.get_model(model, **kwargs)`` without its classifier -> (module, arch)."""
    from torchvision import models

    check_library_name("torchvision", model)
    kw = dict(kwargs)
    ctor = models.get_model_builder(model)
    if "aux_logits" not in kw and model in ("googlenet", "inception_v3"):
        kw["aux_logits"] = False  # GoogLeNet / Inception: one output, not (logits, aux) in training
    try:
        net = ctor(weights=None, **kw)
    except TypeError as err:
        raise ValueError(f"torchvision:{model} does not take backbone.kwargs {kwargs}: {err}") from None
    head = _remove_torchvision_head(net, model)
    first = _first_conv(net)
    conv_path = None
    if first is not None and first[1].in_channels != in_channels:
        conv_path = first[0]
        net.set_submodule(conv_path, _conv_like(first[1], in_channels))
    stem = _small_image_stem(net, cifar_stem, maxpool)
    arch = {"library": "torchvision", "model": model, "kwargs": kw, "in_channels": in_channels, "head": head,
            "first_conv": conv_path, **stem}
    return net, arch


def vit_patch_size(crop: int, default: int) -> int:
    """The patch for a ``crop``-px ViT: ``default`` if it divides the crop into >= 7 x 7 patches,
    else the largest of 16, 8, 4, 2 that does (``default`` if none does)."""
    if crop % default == 0 and crop // default >= 7:
        return default
    return next((p for p in (16, 8, 4, 2) if crop % p == 0 and crop // p >= 7), default)


def timm_model(model: str, in_channels: int, cifar_stem: bool, maxpool: bool, kwargs: dict,
               image_size: int | None = None, eval_size: int | None = None) -> tuple[nn.Module, dict]:
    """``timm.create_model(model, num_classes=0, in_chans=C, **kwargs)`` -> (module, arch); ViTs sized
    for ``image_size`` (module docstring)."""
    timm = _import_timm(model)
    check_library_name("timm", model)
    kw = dict(kwargs)
    for reserved in ("num_classes", "in_chans", "pretrained"):
        if reserved in kw:
            raise ValueError(f"backbone.kwargs.{reserved} is set by relssl for timm models (the classifier is removed, "
                             "the channels are the dataset's, weights come from backbone.weights); remove it")

    def create(kw):
        try:
            return timm.create_model(model, pretrained=False, num_classes=0, in_chans=in_channels, **kw)
        except TypeError as err:
            raise ValueError(f"timm:{model} does not take backbone.kwargs {kwargs}: {err}") from None

    net = create(kw)
    embed = getattr(net, "patch_embed", None)
    if image_size and embed is not None and getattr(embed, "img_size", None) is not None:
        patch = embed.patch_size[0] if isinstance(embed.patch_size, (tuple, list)) else int(embed.patch_size)
        changed = False
        if "img_size" not in kw:
            kw["img_size"] = image_size
            changed = True
        if "patch_size" not in kw and vit_patch_size(image_size, patch) != patch:
            kw["patch_size"] = vit_patch_size(image_size, patch)
            changed = True
        if eval_size and eval_size != image_size and "dynamic_img_size" not in kw:
            kw["dynamic_img_size"] = True  # evaluation at another size: position embeddings resampled
            changed = True
        if changed:
            net = create(kw)
    stem = _small_image_stem(net, cifar_stem, maxpool)
    head = (getattr(net, "pretrained_cfg", None) or {}).get("classifier")
    arch = {"library": "timm", "model": model, "kwargs": kw, "in_channels": in_channels,
            "head": head if isinstance(head, str) else list(head or []), **stem}
    return net, arch


def _resolve_import(path: str):
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"backbone.name={path!r}: an import path looks like package.module:factory")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"backbone.name={path}: cannot import {module_name} ({err}); is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"backbone.name={path}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"backbone.name={path}: {attr} is not a class or function")
    return obj


def factory_model(family: str, name: str, in_channels: int, kwargs: dict) -> tuple[nn.Module, dict]:
    """A registered factory or an import path, called with ``kwargs`` (+ ``in_channels`` when it takes it)."""
    factory = BACKBONE_FACTORIES[name] if family == "registered" else _resolve_import(name)
    kw = dict(kwargs)
    params = _kwargs_of(factory)
    if params is None or "in_channels" in params:
        kw.setdefault("in_channels", in_channels)
    try:
        net = factory(**kw)
    except TypeError as err:
        raise ValueError(f"backbone.name={name}: calling it with backbone.kwargs {kwargs} failed: {err}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"backbone.name={name} returned {type(net).__name__}, not a torch.nn.Module")
    return net, {"library": family, "model": name, "kwargs": kw, "in_channels": in_channels}
