"""Export a checkpoint's backbone as a safetensors file that plain torchvision can load.

The file holds the backbone's state dict (the network every protocol evaluates: the online /
student / query encoder of the method) and, in the safetensors header, the metadata needed to
rebuild it: ``backbone``, ``in_channels``, ``cifar_stem``, ``maxpool``, ``feat_dim``, plus the
method, dataset, input size and normalisation mean / std. safetensors files hold tensors only:
loading one never runs code.

**With torchvision** (ResNets; the keys are torchvision's, minus ``fc``; SplitBatchNorm has the
keys of BatchNorm, so nothing is renamed)::

    import torch, torchvision
    from safetensors.torch import load_file

    net = torchvision.models.resnet18()
    # CIFAR stem (cifar_stem=true): 3x3 stride-1 first convolution without bias, with
    # in_channels input channels (1 for Fashion-MNIST); torchvision's own stem is 7x7 stride 2
    net.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # (cifar_stem=false with in_channels != 3: Conv2d(in_channels, 64, 7, 2, 3, bias=False))
    net.maxpool = torch.nn.Identity()   # only when maxpool=false (CIFAR-sized inputs)
    net.fc = torch.nn.Identity()        # the output is the pooled feature (512-d for ResNet-18)
    net.load_state_dict(load_file("backbone.safetensors"))   # strict
    net.eval()

Feed it images normalised with the ``mean`` / ``std`` of the metadata, at ``input_size``.

**Any torchvision or timm model** (``backbone.name=torchvision:<model>`` / ``timm:<model>``): the
keys are the library's own; the metadata's ``constructor`` is the Python code that builds the
model they load into (for timm, ``timm.create_model(<model>, num_classes=0, in_chans=C, **kwargs)``
with the kwargs the run was built with, e.g. a ViT's ``img_size`` and ``patch_size``), and
``arch`` says the same as data (library, model, kwargs, the removed classifier ``head``, the
first convolution rebuilt for the channels, the CIFAR stem, the removed max-pool).

**With relssl**: :func:`load_backbone` rebuilds the architecture from the metadata and loads the
weights strictly (a module passed to ``pretrain`` as a Python object cannot be rebuilt from
metadata: build yours and ``load_state_dict(load_file(path))``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from relssl.config import eval_image_size
from relssl.errors import CheckpointError, ConfigError, DataError
from relssl.evaluate.exported import FORMAT, FORMAT_VERSION, read_metadata  # noqa: F401 - part of this module's API

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")


def _dataset_info(cfg, splits=None):
    if splits is not None:
        return splits.info
    from relssl.data import dataset_info

    try:  # the defaults only: no images are decoded
        return dataset_info(cfg.data.dataset, cfg.data.root, size=cfg.data.image_size, **cfg.data.options)
    except DataError:
        return None


def backbone_from_checkpoint(path: str | Path, overrides: list[str] | None = None, splits=None,
                             maxpool: bool | None = None, backbone: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """(backbone with the checkpoint's weights, metadata) of a checkpoint or run directory.

    The dataset is read only for its defaults (max-pool when the config leaves it to the
    dataset, mean / std); if it is not on this machine, pass ``maxpool`` where needed.
    ``backbone``: a new instance of your own module, for a run trained with ``pretrain(cfg, backbone=...)``.
    """
    import relssl
    from relssl.evaluate.checkpoint import build_method, infer_in_channels, load_method_weights, read_checkpoint

    ckpt_path, ckpt, cfg = read_checkpoint(path, overrides)
    info = _dataset_info(cfg, splits)
    b = cfg.backbone
    if maxpool is None:
        maxpool = b.maxpool
    if maxpool is None:
        if info is None:
            raise DataError(f"dataset {cfg.data.dataset} is not on this machine, so its max-pool default is unknown; "
                            "pass --maxpool true|false (or data.root=DIR)")
        maxpool = info.maxpool
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("method.")}
    in_channels = info.channels if info is not None else infer_in_channels(state)
    method, built = build_method(cfg, in_channels, maxpool, backbone)
    feat_dim = built.feat_dim
    load_method_weights(method, ckpt, ckpt_path)
    # the size relssl's own evaluation feeds (the native size when it is at least the crop size)
    size = eval_image_size(cfg, info) if info is not None else (cfg.data.eval_size or cfg.data.crop_size)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "backbone": b.name, "in_channels": in_channels, "cifar_stem": b.cifar_stem, "maxpool": bool(maxpool),
        "feat_dim": feat_dim, "trained_bn_splits": b.bn_splits,
        "torchvision_compatible": b.name in TORCHVISION_ARCHS or built.arch.get("library") == "torchvision",
        "arch": built.arch, "constructor": constructor_code(built.arch),
        "method": cfg.method["name"], "dataset": cfg.data.dataset, "input_size": size,
        "mean": list(info.mean) if info is not None else None, "std": list(info.std) if info is not None else None,
        "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"), "source": str(ckpt_path),
        # the whole recipe the weights were trained with (data.* as evaluated: with the export's overrides)
        "config": cfg.to_dict(),
        "relssl_version": relssl.__version__, "torch": torch.__version__,
    }
    return method.backbone, meta


def default_export_path(path: str | Path) -> Path:
    """``RUN_DIR/backbone.safetensors`` (``backbone_best.safetensors`` for best.ckpt), or
    ``<file>.backbone.safetensors`` beside a loose checkpoint file."""
    from relssl.evaluate.checkpoint import resolve_checkpoint, run_dir_of

    ckpt = resolve_checkpoint(path)
    run = run_dir_of(ckpt)
    if run is not None:
        return run / ("backbone.safetensors" if ckpt.stem == "last" else f"backbone_{ckpt.stem}.safetensors")
    return ckpt.with_name(ckpt.stem + ".backbone.safetensors")


def save_backbone(backbone: nn.Module, meta: dict, out: str | Path) -> Path:
    """Write ``backbone``'s state dict and ``meta`` (JSON-encoded values) as safetensors, atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"export file {out} must end in .safetensors")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.state_dict().items()}
    header = {k: json.dumps(v) for k, v in meta.items()}
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=header)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600 files: give the usual mode
        os.replace(tmp, out)
    except Exception as err:  # noqa: BLE001 - OSError, or safetensors' own error wrapping an I/O error
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(f"cannot write {out}: {reason}; choose a writable -o path with free space") from err
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_backbone(path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
                    splits=None, maxpool: bool | None = None, backbone: nn.Module | None = None) -> tuple[Path, dict]:
    """Export the backbone of a checkpoint / run directory; returns (file, metadata)."""
    backbone, meta = backbone_from_checkpoint(path, overrides, splits=splits, maxpool=maxpool, backbone=backbone)
    out = Path(out) if out is not None else default_export_path(path)
    return save_backbone(backbone, meta, out), meta


def build_from_metadata(meta: dict) -> nn.Module:
    """An untrained relssl backbone with the architecture ``meta`` describes (plain BatchNorm)."""
    from relssl.nn import build_backbone

    arch = meta.get("arch") or {}
    if arch.get("library") == "object":
        raise CheckpointError(f"the exported backbone is a module passed to pretrain() as a Python object "
                              f"({arch.get('model')}): build one and load_state_dict(safetensors.torch.load_file(path))")
    try:
        net, _ = build_backbone(meta["backbone"], in_channels=int(meta["in_channels"]),
                                cifar_stem=bool(meta["cifar_stem"]), maxpool=bool(meta["maxpool"]),
                                kwargs=arch.get("kwargs") or {})
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"exported backbone metadata is incomplete or unknown: {err}") from err
    return net


def constructor_code(arch: dict) -> str:
    """Python that builds the module an exported state dict loads into, with the library alone."""
    lib, model, kw, c = arch.get("library"), arch.get("model"), arch.get("kwargs") or {}, arch.get("in_channels", 3)
    args = "".join(f", {k}={v!r}" for k, v in kw.items())
    lines = []
    if lib == "timm":
        lines.append(f"net = timm.create_model({model!r}, num_classes=0, in_chans={c}{args})")
    elif lib in ("torchvision", "relssl") and (lib == "torchvision" or model in TORCHVISION_ARCHS):
        lines.append(f"net = torchvision.models.get_model({model!r}{args})")
        if arch.get("head"):
            lines.append(f"net.set_submodule({arch['head']!r}, torch.nn.Identity())  # the classifier, removed")
        first = arch.get("first_conv") or ("conv1" if lib == "relssl" and c != 3 else None)
        if first:
            lines.append(f"# {first}: the same Conv2d with in_channels={c}")
    else:
        return f"the {lib} backbone {model}" + (f" with {kw}" if kw else "") + ": build it, then load_state_dict"
    if arch.get("cifar_stem"):
        lines.append(f"net.conv1 = torch.nn.Conv2d({c}, net.conv1.out_channels, 3, 1, 1, bias=False)  # CIFAR stem")
    if arch.get("maxpool_removed"):
        lines.append("net.maxpool = torch.nn.Identity()")
    return "; ".join(lines)


def torchvision_backbone(meta: dict) -> nn.Module:
    """The plain torchvision ResNet of the module docstring, built from ``meta`` (no relssl classes)."""
    import torchvision

    if meta.get("backbone") not in TORCHVISION_ARCHS:
        raise ConfigError(f"backbone {meta.get('backbone')!r} has no torchvision counterpart; use load_backbone")
    net = getattr(torchvision.models, meta["backbone"])()
    c = int(meta["in_channels"])
    if meta["cifar_stem"]:
        net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    elif c != 3:
        net.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if not meta["maxpool"]:
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported backbone from its metadata and load its weights (strict); eval mode."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    net = build_from_metadata(meta)
    state = load_file(str(path), device=str(map_location))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        line = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise CheckpointError(f"{path}: weights do not fit the {meta['backbone']} its metadata describes ({line[:160]})") from err
    net.feat_dim = int(meta["feat_dim"])  # type: ignore[assignment]
    return net.to(map_location).eval()


# ----------------------------------------------------------------------------- ONNX

ONNX_FORMATS = ("safetensors", "onnx")


class ExportedEncoder(nn.Module):
    """The frozen backbone as it is exported to ONNX: images in, one feature vector per image out.

    ``fold_normalization``: the input is images scaled to [0, 1] (uint8 / 255), and the dataset's
    mean / std are applied inside; otherwise the input is already normalised. ``l2_normalize``: the
    output rows have unit length (the features kNN and retrieval compare with cosines)."""

    def __init__(self, backbone: nn.Module, mean=None, std=None, l2_normalize: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.fold = mean is not None
        if self.fold:
            shape = (1, len(mean), 1, 1)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))
        self.l2_normalize = l2_normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std if self.fold else images
        f = self.backbone(x).flatten(1)
        return nn.functional.normalize(f, dim=1) if self.l2_normalize else f


def save_onnx(backbone: nn.Module, meta: dict, out: str | Path, fold_normalization: bool = False,
              l2_normalize: bool = False) -> Path:
    """Write ``backbone`` (eval mode) as an ONNX graph with a dynamic batch axis, atomically.

    Input ``images`` (batch, C, S, S) float32, output ``features`` (batch, D). ``meta`` goes into
    the model's metadata (JSON-encoded values), with ``input`` saying what the input must be."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise ConfigError(f"ONNX export needs the onnx extra ({err.name} is missing): pip install 'relssl[onnx]'") from err
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"export file {out} must end in .onnx with --format onnx")
    if fold_normalization and not meta.get("mean"):
        raise DataError(f"dataset {meta.get('dataset')} is not on this machine, so its mean / std are unknown: "
                        "pass data.root=DIR, or export without --fold-normalization")
    size = int(meta.get("input_size") or 32)
    encoder = ExportedEncoder(copy_for_export(backbone), meta["mean"] if fold_normalization else None,
                              meta["std"] if fold_normalization else None, l2_normalize).eval()
    example = torch.rand(2, int(meta["in_channels"]), size, size)
    meta = {**meta, "input": ("images in [0, 1] (uint8 / 255), normalised inside" if fold_normalization
                              else "images normalised with mean / std"),
            "fold_normalization": fold_normalization, "l2_normalize": l2_normalize}
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            program = torch.onnx.export(encoder, (example,), dynamo=True, input_names=["images"],
                                        output_names=["features"], verbose=False,
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
        model = program.model_proto
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save_model(model, str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {out}: {err.strerror}; choose a writable -o path with free space") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def copy_for_export(backbone: nn.Module) -> nn.Module:
    """A CPU float32 copy in eval mode (the trained module is left as it is)."""
    import copy

    return copy.deepcopy(backbone).to("cpu", torch.float32).eval()


def export_onnx(path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None, splits=None,
                maxpool: bool | None = None, fold_normalization: bool = False,
                l2_normalize: bool = False, backbone: nn.Module | None = None) -> tuple[Path, dict]:
    """Export the backbone of a checkpoint / run directory as ONNX; returns (file, metadata)."""
    backbone, meta = backbone_from_checkpoint(path, overrides, splits=splits, maxpool=maxpool, backbone=backbone)
    out = Path(out) if out is not None else default_export_path(path).with_suffix(".onnx")
    return save_onnx(backbone, meta, out, fold_normalization, l2_normalize), meta


def read_onnx_metadata(path: str | Path) -> dict:
    """The metadata relssl wrote into an exported ONNX model (values decoded from JSON)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}
