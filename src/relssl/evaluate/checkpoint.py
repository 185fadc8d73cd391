"""Load a pretraining checkpoint's method (and its backbone) for evaluation; save eval results.

A checkpoint is read with ``torch.load(weights_only=True)`` (:func:`relssl.engine.checkpoint.load_checkpoint_file`):
nothing in it is unpickled as an arbitrary object. The method is rebuilt from the config saved
in the checkpoint, and its weights are loaded; only the weights of the backbone (the network
every protocol evaluates) must all be present. Extra entries (plug-in state, say) are ignored.

:func:`prepare` bundles what every protocol needs (:class:`EvalSetup`); :func:`save_result`
writes a protocol's JSON into ``RUN_DIR/eval/`` when the checkpoint belongs to a run directory.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from relssl.config import (
    Config,
    apply_overrides,
    backbone_sizes,
    build_backbone_from_config,
    config_from_dict,
    eval_image_size,
    load_data,
)
from relssl.data import DatasetSplits, ImageDataset
from relssl.engine.checkpoint import load_checkpoint_file
from relssl.errors import CheckpointError, ConfigError, DataError
from relssl.fileio import atomic_write_text, resolve_checkpoint
from relssl.methods import build_method as build_method_of
from relssl.metrics.knn import extract_features, knn_accuracy


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory a checkpoint (or run directory) belongs to, or None for a loose file."""
    path = Path(path)
    if path.is_dir():
        return path if (path / "config.yaml").is_file() or (path / "checkpoints").is_dir() else None
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    return None


EXPORTED = "relssl_exported"  # the key that marks a checkpoint dict read from an exported backbone


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is a backbone file written by ``relssl export`` (not a checkpoint)."""
    return Path(path).suffix == ".safetensors" and Path(path).is_file()


def _read_exported(path: Path) -> dict:
    """An exported backbone as a checkpoint dict: its config (the metadata's), and its weights as the
    backbone's (``load_method_weights`` puts them where the method keeps its backbone)."""
    from safetensors.torch import load_file

    from relssl.evaluate.exported import read_metadata

    meta = read_metadata(path)
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} was exported before relssl put the run's config in the file; evaluate the run "
                              "directory it came from, or load it with relssl.evaluate.export.load_backbone")
    raw = {**raw, "backbone": {**raw["backbone"], "maxpool": meta["maxpool"]}}  # the architecture it was built with
    return {"hyper_parameters": {"config": raw}, EXPORTED: True, "epoch": meta.get("epoch"),
            "global_step": meta.get("global_step"),
            "state_dict": {f"method.backbone.{k}": v for k, v in load_file(str(path)).items()}}


def read_checkpoint(path: str | Path, overrides: list[str] | None = None) -> tuple[Path, dict, Config]:
    """(checkpoint path, checkpoint dict, its config with ``data.*`` overrides applied); ``path`` may
    also be a backbone file of ``relssl export`` that carries its run's config."""
    if is_exported(path):
        ckpt_path, ckpt = Path(path), _read_exported(Path(path))
    else:
        ckpt_path = resolve_checkpoint(path)
        ckpt = load_checkpoint_file(ckpt_path)
    raw = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {ckpt_path} carries no relssl config: not made by relssl pretrain")
    for text in overrides or []:  # what is evaluated, and the memory layout (a layout, not another network)
        if not (text.startswith("data.") or text.startswith("backbone.channels_last=")):
            raise ConfigError(f"override {text!r}: only data.* keys (and backbone.channels_last) can be changed "
                              "when evaluating a checkpoint")
    raw = apply_overrides(dict(raw), list(overrides or []))
    return ckpt_path, ckpt, config_from_dict(raw)


def infer_in_channels(state: dict[str, torch.Tensor], default: int = 3) -> int:
    """Input channels of a backbone state dict: the second dimension of its first 4-D weight."""
    for key, value in state.items():
        if key.endswith("weight") and value.ndim == 4:
            return int(value.shape[1])
    return default


def _backbone_prefix(method: nn.Module) -> str:
    backbone = method.backbone
    for name, module in method.named_modules():
        if module is backbone:
            return name
    raise CheckpointError(f"method {type(method).__name__}.backbone is not one of its sub-modules")


def build_method(cfg: Config, in_channels: int, maxpool: bool, backbone: nn.Module | None = None, info=None):
    """(a freshly initialised method of ``cfg``, its :class:`relssl.nn.Backbone`), the backbone built
    without any ``backbone.weights`` file: the weights come from the checkpoint. Seeded by
    ``cfg.seed`` without touching the global random state, so a random-init baseline is
    reproducible. ``backbone``: a new instance of the module a run was trained with as a Python
    object (copied, never changed). ``info``: the dataset's :class:`relssl.data.DatasetInfo`, when
    known: the backbone is then checked on the crop and evaluation sizes."""
    import copy

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        built = build_backbone_from_config(cfg, in_channels, maxpool, weights=False,
                                           sizes=backbone_sizes(cfg, info) if info is not None else None,
                                           module=copy.deepcopy(backbone) if backbone is not None else None)
        method = build_method_of(cfg.method, built.module, built.feat_dim)
    return method, built


def load_method_weights(method: nn.Module, ckpt: dict, ckpt_path: Path) -> None:
    """Load the ``method.*`` weights of a Lightning checkpoint; every backbone weight must be there."""
    state = {k[len("method."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("method.")}
    prefix = _backbone_prefix(method)
    if ckpt.get(EXPORTED):  # the backbone's own keys: where this method keeps its backbone
        state = {f"{prefix}.{k[len('backbone.'):]}" if prefix else k[len("backbone."):]: v for k, v in state.items()}
    wanted = [f"{prefix}.{k}" if prefix else k for k in method.backbone.state_dict()]
    absent = [k for k in wanted if k not in state]
    if absent:
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not match its config's backbone: {len(absent)} backbone weights "
            f"missing (e.g. method.{absent[0]})")
    # the image channels the run trained on against the data it is evaluated on (first conv weight)
    first = next((k for k in wanted if state[k].dim() == 4), None)
    own = method.backbone.state_dict()
    if first is not None:
        trained, here = state[first].shape[1], own[first[len(prefix) + 1:] if prefix else first].shape[1]
        if trained != here:
            raise DataError(f"checkpoint {ckpt_path} was trained on {trained}-channel images but the data to evaluate "
                            f"has {here}; evaluate on {trained}-channel data, or for an image folder set "
                            f"data.options.channels={trained}")
    try:
        method.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln), first[-1].strip() if first else "")
        raise CheckpointError(f"checkpoint {ckpt_path} does not fit its config's method: {detail[:200]}") from err


def load_method(path: str | Path, overrides: list[str] | None = None, splits: DatasetSplits | None = None,
                random_init: bool = False, backbone: nn.Module | None = None):
    """(config, method with the checkpoint's weights, dataset splits, checkpoint path).

    ``splits`` replaces the dataset named in the config (tests, custom subsets);
    ``random_init=True`` keeps the method's fresh initialisation (the random-init baseline);
    ``backbone``: a new instance of your own module, for a run trained with ``pretrain(cfg, backbone=...)``.
    """
    ckpt_path, ckpt, cfg = read_checkpoint(path, overrides)
    if splits is None:
        splits = load_data(cfg)
    maxpool = splits.info.maxpool if cfg.backbone.maxpool is None else cfg.backbone.maxpool
    method, _ = build_method(cfg, splits.info.channels, maxpool, backbone, info=splits.info)
    if not random_init:
        load_method_weights(method, ckpt, ckpt_path)
    return cfg, method, splits, ckpt_path


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA device is available; use --device cpu")
    return dev


@dataclass
class EvalSetup:
    """Everything a protocol needs: the config, the method (on ``device``), the data, where to save."""

    cfg: Config
    method: nn.Module
    splits: DatasetSplits
    ckpt_path: Path
    run_dir: Path | None
    device: torch.device
    random_init: bool = False
    template: nn.Module | None = None  # the untrained module a run trained as a Python object (random-init baseline)

    @property
    def backbone(self) -> nn.Module:
        return self.method.backbone

    @property
    def exported(self) -> bool:
        """Loaded from an exported backbone: only the backbone is trained (the heads are fresh)."""
        return is_exported(self.ckpt_path)

    @property
    def eval_size(self) -> int:
        return eval_image_size(self.cfg, self.splits.info)

    @property
    def channels_last(self) -> bool:
        """Evaluate in the memory layout the run trained in (``backbone.channels_last``, by default
        NHWC weights and images on every device: on a CPU 1.5-1.8x faster features than NCHW)."""
        return bool(self.cfg.backbone.channels_last)

    def in_layout(self, net: nn.Module) -> nn.Module:
        """``net`` (in place) in the evaluation's memory layout."""
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    @property
    def mean(self):
        return self.splits.info.mean

    @property
    def std(self):
        return self.splits.info.std

    @property
    def num_classes(self) -> int:
        return self.splits.info.num_classes

    @property
    def class_names(self) -> list[str]:
        names = list(self.splits.info.classes)
        return names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    def train_split(self) -> ImageDataset:
        """The probe-train split (= the kNN bank), ``data.bank_subset`` applied (class-balanced)."""
        return _labelled(self.splits.bank.subset(self.cfg.data.bank_subset, seed=self.cfg.seed).materialize(), "bank")

    def test_split(self) -> ImageDataset:
        return _labelled(self.splits.test.subset(self.cfg.data.test_subset, seed=self.cfg.seed).materialize(), "test")

    def features(self, images: torch.Tensor, normalize: bool = True, backbone: nn.Module | None = None) -> torch.Tensor:
        """Backbone features (eval mode, float32, on ``device``) of uint8 images at the eval size."""
        return extract_features(self.in_layout(backbone or self.backbone), images, size=self.eval_size, mean=self.mean,
                                std=self.std, device=self.device, channels_last=self.channels_last, normalize=normalize)

    def header(self, protocol: str) -> dict:
        """The fields every result JSON starts with."""
        return {"protocol": protocol, "checkpoint": str(self.ckpt_path), "run_dir": str(self.run_dir or ""),
                "method": self.cfg.method["name"], "dataset": self.cfg.data.dataset,
                "backbone": self.cfg.backbone.name, "random_init": self.random_init,
                "eval_size": self.eval_size, "channels_last": self.channels_last, "device": str(self.device),
                "torch": torch.__version__}


def _labelled(ds: ImageDataset, name: str) -> ImageDataset:
    if ds.labels is None:
        raise ConfigError(f"the {name} split has no labels; evaluation protocols need a labelled dataset")
    return ds


def prepare(path: str | Path, overrides: list[str] | None = None, splits: DatasetSplits | None = None,
            device: str | torch.device | None = None, random_init: bool = False,
            backbone: nn.Module | None = None) -> EvalSetup:
    """Load a checkpoint (or run directory) for evaluation on ``device`` (``auto``: CUDA if present).

    ``backbone``: for a run trained with ``pretrain(cfg, backbone=module)``, a new, untrained instance
    of the same class (the checkpoint's weights are loaded into a copy of it)."""
    dev = resolve_device(device)
    cfg, method, splits, ckpt_path = load_method(path, overrides, splits=splits, random_init=random_init,
                                                 backbone=backbone)
    method.to(dev).eval()
    if cfg.backbone.channels_last:  # the layout it trained in (EvalSetup.channels_last)
        method.to(memory_format=torch.channels_last)
    return EvalSetup(cfg=cfg, method=method, splits=splits, ckpt_path=ckpt_path, run_dir=run_dir_of(ckpt_path),
                     device=dev, random_init=random_init, template=backbone)


def result_name(setup: EvalSetup, protocol: str) -> str:
    """File stem of a result: ``knn``, ``linear_best`` (best.ckpt), ``semisup_1pct_random`` ..."""
    name = protocol
    stem = setup.ckpt_path.stem
    if stem != "last":
        name += f"_{stem}"
    if setup.random_init:
        name += "_random"
    return name


def eval_dir(setup: EvalSetup, out_dir: str | Path | None = None) -> Path | None:
    """Where results go: ``out_dir`` if given, else ``RUN_DIR/eval`` (None for a loose checkpoint)."""
    if out_dir is not None:
        return Path(out_dir)
    return setup.run_dir / "eval" if setup.run_dir is not None else None


def write_json(obj: dict, path: str | Path) -> Path:
    """Write JSON atomically (temporary file + rename)."""
    try:
        return atomic_write_text(path, json.dumps(obj, indent=2))
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}; choose a writable --out directory") from err


@contextmanager
def timed(result: dict):
    t0 = time.perf_counter()
    yield
    result["seconds"] = round(time.perf_counter() - t0, 2)


def evaluate_knn_checkpoint(path: str | Path, overrides: list[str] | None = None, k: int = 200, t: float = 0.1,
                            weighting: str = "exp", device: str | None = None) -> dict:
    """Weighted (or majority-vote) kNN top-1 / top-5 of a checkpoint (kept for compatibility;
    :func:`relssl.evaluate.knn.evaluate_knn` runs all kNN protocols and baselines)."""
    s = prepare(path, overrides, device=device)
    bank, test = s.train_split(), s.test_split()
    fb, ft = s.features(bank.images), s.features(test.images)
    acc = knn_accuracy(fb, bank.labels.to(s.device), ft, test.labels.to(s.device), s.num_classes, k=k, t=t,
                       weighting=weighting)
    return {"checkpoint": str(s.ckpt_path), "method": s.cfg.method["name"], "k": k, "t": t, "weighting": weighting,
            "bank": len(bank), "test": len(test), **acc}
