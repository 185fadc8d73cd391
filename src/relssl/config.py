"""Typed configuration: dataclasses, YAML files and ``key=value`` overrides, validated before any work.

A run is described by one :class:`Config`. ``load_config(path, overrides)`` reads a YAML recipe,
applies overrides such as ``optim.lr=0.1`` or ``method.queue_size=8192``, and checks every key
and value: an unknown key or a value of the wrong type or range raises :class:`ConfigError` with
one line that names the key and what is allowed.

The ``method`` section is checked against the chosen method's own ``Config`` dataclass, and the
``augment`` section against :class:`relssl.augment.ViewRecipe`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relssl.augment import recipe as make_recipe
from relssl.data import DatasetSplits, load_dataset
from relssl.errors import ConfigError
from relssl.methods import METHODS, method_config
from relssl.methods.plugins import plugins_config
from relssl.nn import Backbone, check_backbone_name, check_builtin_kwargs, load_weights, make_backbone
from relssl.schema import build_dataclass


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with two rules of YAML 1.2 that users expect: ``1e-3`` and ``5e-4`` are
    numbers (YAML 1.1 wants ``1.0e-3``), and a key given twice in one mapping is an error (PyYAML
    silently keeps the last)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$
    |^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$""", re.X)
for _c in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_c] = [r for r in _Loader.yaml_implicit_resolvers.get(_c, [])
                                           if r[0] != "tag:yaml.org,2002:float"]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"key {key!r} is given twice in one mapping (line {line}); keep one of them")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:map", _mapping_without_duplicates)


def yaml_load(text: str):
    """Parse YAML text with relssl's rules (see :class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    root: str | None = None  # None: the dataset's usual places (see relssl.data)
    download: bool = True  # allowed to install / download a missing dataset
    subset: int | None = None  # pretrain on a seeded, class-balanced subset of this many images
    bank_subset: int | None = None  # kNN bank size (None: the whole bank split)
    test_subset: int | None = None  # test images used by the kNN monitor (None: all)
    crop_size: int | None = None  # None: the dataset's default crop size
    # size the evaluation images are resized to; None: the native size when it is at least the
    # crop size (the small-data recipe evaluates STL-10 at its native 96 px), else the crop size (28 -> 32)
    eval_size: int | None = None
    image_size: int | None = None  # decode / resize the stored images to this size (None: native; folders 64)
    memory_limit_gb: float = 8.0  # a split larger than this once decoded stays on disk (file-backed)
    num_workers: int = 8  # decoding workers of the file-backed path
    options: dict = field(default_factory=dict)  # loader options, e.g. {channels: 1} for folders

    def validate(self) -> None:
        if self.memory_limit_gb < 0:
            raise ConfigError(f"data.memory_limit_gb must be >= 0, got {self.memory_limit_gb}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        for key in ("subset", "bank_subset", "test_subset", "crop_size", "eval_size", "image_size"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise ConfigError(f"data.{key} must be a positive integer or null, got {v}")


@dataclass
class BackboneConfig:
    # a built-in (resnet18/34/50, convnet, convnet_tiny, convnet_grid[_small]), torchvision:<model>, timm:<model>,
    # a name registered with relssl.nn.register_backbone, or package.module:factory (docs/backbones.md)
    name: str = "resnet18"
    kwargs: dict = field(default_factory=dict)  # the model constructor's keyword arguments (torchvision / timm / factory)
    cifar_stem: bool = True  # ResNet-like models: 3x3 stride-1 first convolution
    maxpool: bool | None = None  # ResNet-like models; None: the dataset's default (kept for 64-px datasets)
    bn_splits: int = 1  # SplitBatchNorm groups (8 in the small-data recipe, docs/methods/small-data-recipe.md)
    channels_last: bool = True  # weights and views in NHWC (faster on GPU and CPU alike; false: NCHW)
    weights: str | None = None  # a local .safetensors / .pth state dict to start from (default: random init)
    pretrained: str | None = None  # the former name of `weights` (read when `weights` is unset)

    def validate(self) -> None:
        try:
            check_backbone_name(self.name)
        except ValueError as err:
            raise ConfigError(f"backbone.name: {err}") from None
        if not isinstance(self.kwargs, dict):
            raise ConfigError(f"backbone.kwargs must be a mapping of constructor arguments, got {self.kwargs!r}")
        try:
            check_builtin_kwargs(self.name, self.kwargs)
        except ValueError as err:
            raise ConfigError(f"backbone.kwargs: {err}") from None
        if self.bn_splits < 1:
            raise ConfigError(f"backbone.bn_splits must be >= 1, got {self.bn_splits}")
        if self.weights and self.pretrained and self.weights != self.pretrained:
            raise ConfigError("backbone.weights and backbone.pretrained (its former name) name different files; set only "
                              "backbone.weights")
        if self.weights is None and self.pretrained:
            self.weights = self.pretrained
        self.pretrained = None  # (the file is read when the backbone is built, before the run directory exists)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | lars | adamw
    lr: float = 0.06
    lr_scaling: str = "none"  # none | linear (lr * batch / 256) | sqrt (lr * sqrt(batch))
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    # no weight decay (and no LARS adaptation) on norm weights, biases, and the parameters a model names in
    # its no_weight_decay() (a ViT's position embedding and class token)
    exclude_bn_bias: bool = False
    lars_eta: float = 0.001  # LARS trust coefficient
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # AdamW
    grad_clip: float | None = None  # clip the gradients' global norm to this (ViT recipes), none by default
    batch_size: int = 256  # per process
    # the batch over all processes: when set, batch_size is derived from it (global / processes), so a
    # run keeps its global batch on any number of devices; refused if the processes do not divide it
    global_batch_size: int | None = None
    epochs: int = 200
    warmup_epochs: float = 5.0  # linear warm-up from 0, then cosine to min_lr, updated every step
    min_lr: float = 0.0
    max_steps: int | None = None  # stop after this many steps (smoke tests, benchmarks)

    def validate(self) -> None:
        if self.name not in ("sgd", "lars", "adamw"):
            raise ConfigError(f"optim.name must be one of sgd, lars, adamw; got {self.name!r}")
        if (not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.lr_scaling not in ("none", "linear", "sqrt"):
            raise ConfigError(f"optim.lr_scaling must be one of none, linear, sqrt; got {self.lr_scaling!r}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 2:
            raise ConfigError(f"optim.batch_size must be >= 2, got {self.batch_size}")
        if self.global_batch_size is not None and self.global_batch_size < 2:
            raise ConfigError(f"optim.global_batch_size must be >= 2 or null, got {self.global_batch_size}")
        if self.epochs < 1:
            raise ConfigError(f"optim.epochs must be >= 1, got {self.epochs}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"optim.warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"optim.max_steps must be >= 1 or null, got {self.max_steps}")


MONITORS = ("auto", "knn", "rankme", "none")  # values of trainer.monitor
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")  # values of trainer.loggers


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"  # auto (bf16-mixed on GPU, 32 on CPU) | 32 | bf16-mixed | 16-mixed
    # the online monitor of representation quality: auto (knn when the bank and test splits have labels,
    # else rankme) | knn (kNN top-1 / top-5; RankMe, uniformity and alignment logged beside it; best.ckpt by
    # knn_top1) | rankme (label-free only: RankMe, uniformity, alignment; best.ckpt by rankme) | none
    monitor: str = "auto"
    # the monitor's cadence (whichever monitor; the key names are historical): every N epochs and after the
    # last one. 0 = no periodic evaluation: with knn_at_start=true the monitor still runs at the start and after
    # the last epoch, with both off it never runs. best.ckpt is kept only when N > 0
    knn_every: int = 1
    knn_k: int = 200
    knn_t: float = 0.1
    knn_at_start: bool = True  # the monitor also evaluates the randomly initialised backbone (the baseline)
    # pretraining images (a seeded, class-blind subset) of the label-free monitor (null: all of them)
    monitor_subset: int | None = 4096
    log_every_n_steps: int = 20
    progress_bar: bool = True
    checkpoint_every: int = 1  # epochs between checkpoints
    nan_policy: str = "stop"  # stop | skip: what a non-finite loss does
    threads: int | None = None  # torch CPU threads (None: torch's default)
    diagnose_every: int = 50  # false-negative diagnostics every N steps when labels exist (0 = never)
    # BatchNorm statistics over all processes (torch's SyncBatchNorm; GPUs only): Lightning converts
    # every BatchNorm of the model, teachers included, when DDP starts; a no-op with one process
    sync_batchnorm: bool = False
    # experiment loggers: csv (metrics.csv: always) and any of tensorboard, mlflow, wandb (relssl.engine.loggers)
    loggers: tuple[str, ...] = ("csv", "tensorboard")
    experiment: str = "relssl"  # the MLflow experiment / W&B project
    mlflow_uri: str | None = None  # MLflow tracking URI (null: a file store in OUTPUT_DIR/mlruns)
    wandb_offline: bool = False  # W&B without network (upload later with `wandb sync`)

    def validate(self) -> None:
        for name in self.loggers:
            if name not in LOGGERS:
                raise ConfigError(f"trainer.loggers: unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
        if len(set(self.loggers)) != len(self.loggers):
            raise ConfigError(f"trainer.loggers lists a logger twice: {list(self.loggers)}; list each once")
        if "csv" not in self.loggers:
            raise ConfigError("trainer.loggers must include csv (metrics.csv, which relssl report and a resume read); "
                              f"add it: trainer.loggers=[csv,{','.join(self.loggers)}]")
        for name, module in (("mlflow", "mlflow"), ("wandb", "wandb")):
            if name in self.loggers and importlib.util.find_spec(module) is None:
                raise ConfigError(f"trainer.loggers names {name}, which is not installed: pip install 'relssl[{name}]'")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise ConfigError(f"trainer.accelerator must be one of auto, cpu, gpu; got {self.accelerator!r}")
        if self.precision not in ("auto", "32", "bf16-mixed", "16-mixed", "64"):
            raise ConfigError(
                f"trainer.precision must be one of auto, 32, bf16-mixed, 16-mixed, 64; got {self.precision!r}"
            )
        if self.monitor not in MONITORS:
            raise ConfigError(f"trainer.monitor must be one of {', '.join(MONITORS)}; got {self.monitor!r}")
        if self.monitor_subset is not None and (self.monitor_subset < 0 or self.monitor_subset == 1):
            raise ConfigError(f"trainer.monitor_subset must be 0 (no label-free probe beside kNN), an integer >= 2 "
                              f"or null (all), got {self.monitor_subset}")
        if self.monitor_subset == 0 and self.monitor == "rankme":
            raise ConfigError("trainer.monitor_subset=0 turns the label-free probe off, but trainer.monitor=rankme "
                              "is that probe; set trainer.monitor_subset >= 2 or another trainer.monitor")
        if self.knn_every < 0:
            raise ConfigError(f"trainer.knn_every must be >= 0, got {self.knn_every}")
        if self.knn_k < 1:
            raise ConfigError(f"trainer.knn_k must be >= 1, got {self.knn_k}")
        if self.knn_t <= 0:
            raise ConfigError(f"trainer.knn_t (temperature) must be > 0, got {self.knn_t}")
        if self.nan_policy not in ("stop", "skip"):
            raise ConfigError(f"trainer.nan_policy must be one of stop, skip; got {self.nan_policy!r}")
        if self.devices < 1 or self.num_nodes < 1:
            raise ConfigError("trainer.devices and trainer.num_nodes must be >= 1")
        if self.checkpoint_every < 1:
            raise ConfigError(f"trainer.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.diagnose_every < 0:
            raise ConfigError(f"trainer.diagnose_every must be >= 0 (0 = never), got {self.diagnose_every}")
        if self.log_every_n_steps < 1:
            raise ConfigError(f"trainer.log_every_n_steps must be >= 1, got {self.log_every_n_steps}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"trainer.threads must be >= 1 or null (torch's default), got {self.threads}")


@dataclass
class Config:
    seed: int = 0
    name: str | None = None  # run name (default: <dataset>-<method>-<time>)
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: dict = field(default_factory=lambda: {"name": "mocov2"})  # name + the method's own options
    plugins: Any = None  # plug-ins on the host method: [ascl] or {bsim: {weight: 0.5}}
    views: list | None = None  # recipe names, one per view the method takes (None: the method's default)
    augment: dict = field(default_factory=dict)  # recipe name -> overrides of that preset's fields
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], c) with c parsed as YAML (numbers, true/false, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (for example optim.lr=0.1)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse the value ({err.__class__.__name__})") from err
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a YAML recipe such as configs/fashion_mnist/mocov2.yaml")
    try:
        raw = yaml_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    if raw is None:  # an empty file would silently train every default (MoCo v2, ResNet-18, 200 epochs)
        raise ConfigError(f"config file {path} is empty; start from a packaged recipe (relssl list) or write the "
                          "sections you need (method, data, optim)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def config_from_dict(raw: dict) -> Config:
    """Build and fully validate a Config (method and augmentation sections included)."""
    cfg = build_dataclass(Config, raw)
    if cfg.trainer.sync_batchnorm and cfg.backbone.bn_splits > 1:
        raise ConfigError(f"trainer.sync_batchnorm=true cannot be combined with "
                          f"backbone.bn_splits={cfg.backbone.bn_splits} (SplitBatchNorm); "
                          "set backbone.bn_splits=1 or trainer.sync_batchnorm=false")
    processes = cfg.trainer.devices * cfg.trainer.num_nodes
    if cfg.optim.global_batch_size is not None:
        if cfg.optim.global_batch_size % processes:
            raise ConfigError(f"optim.global_batch_size={cfg.optim.global_batch_size} does not divide among {processes} "
                              f"processes (trainer.devices x trainer.num_nodes); use a multiple of {processes}")
        cfg.optim.batch_size = cfg.optim.global_batch_size // processes
        if cfg.optim.batch_size < 2:
            raise ConfigError(f"optim.global_batch_size={cfg.optim.global_batch_size} leaves {cfg.optim.batch_size} "
                              f"image(s) per process on {processes} processes; use at least {2 * processes}")
    # the method section: checked against the method's own Config dataclass
    cfg.method = method_config(cfg.method)
    cfg.plugins = plugins_config(cfg.plugins, cfg.method["name"])
    # constraints across sections (e.g. a bank that must hold the global batch)
    METHODS[cfg.method["name"]].check_run_config(cfg)
    for name, overrides in cfg.augment.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"augment.{name} must be a mapping of recipe fields, got {overrides!r}")
        try:
            make_recipe(name, **overrides)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"augment.{name}: {err}") from err
    return cfg


def merge_sections(base: dict, extra: dict) -> dict:
    """``extra`` laid over ``base``: mappings merged key by key (recursively), anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_sections(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | list | None = None, overrides: list[str] | None = None) -> Config:
    """The config of one YAML file, or of several laid over each other in order (a method recipe, then
    a backbone recipe such as ``backbones/vit_tiny``), then the ``key=value`` overrides."""
    paths = path if isinstance(path, (list, tuple)) else ([path] if path else [])
    raw: dict = {}
    for p in paths:
        raw = merge_sections(raw, read_yaml(p))
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def dump_config(cfg: Config) -> str:
    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, list):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)


# --------------------------------------------------------------------------- what a config implies
# (here, so that the engine, the evaluation and the CLI all reach them without importing each other)

CONFIG_DIR = Path(__file__).parent / "configs"
"""The packaged recipes: ``<dataset>/<method>.yaml``, and ``backbones/<name>.yaml``: backbone recipes laid
over a method recipe (``relssl pretrain cifar10/simclr backbones/vit_tiny``)."""

OVERLAY_DIRS = ("backbones",)
"""Packaged recipe folders whose files only complete another recipe."""


def list_recipes() -> list[str]:
    """The packaged recipe names (``fashion_mnist/mocov2``, ...), sorted."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.glob("*/*.yaml"))


def resolve_recipe(name: str | Path) -> Path:
    """A YAML path, or a packaged recipe name such as ``fashion_mnist/mocov2``."""
    p = Path(name)
    if p.is_file():
        return p
    name = str(name)
    packaged = CONFIG_DIR / (name if name.endswith(".yaml") else name + ".yaml")
    if packaged.is_file():
        return packaged
    raise ConfigError(f"no config file {name!r}; pass a YAML path or a packaged recipe ({', '.join(list_recipes())})")


def resolve_recipes(names: list) -> list[Path]:
    """Several recipes to lay over each other; a backbone recipe alone is refused (it names no method or data)."""
    paths = [resolve_recipe(names[0])] if names else []
    for name in names[1:]:
        try:
            paths.append(resolve_recipe(name))
        except ConfigError:
            raise ConfigError(f"{name!r} is not a recipe, and an override must look like key=value (for example "
                              "optim.lr=0.1); recipes laid over the first are packaged names such as backbones/vit_tiny "
                              "or YAML paths") from None
    if paths and all(p.parent.name in OVERLAY_DIRS and p.parent.parent == CONFIG_DIR for p in paths):
        raise ConfigError(f"{names[0]} is a backbone recipe: lay it over a method recipe, e.g. "
                          f"relssl pretrain cifar10/simclr {names[0]}")
    return paths


def load_data(cfg: Config) -> DatasetSplits:
    """The dataset a config names, with its size, memory limit and loader options."""
    d = cfg.data
    return load_dataset(d.dataset, d.root, download=d.download, size=d.image_size,
                        memory_limit=int(d.memory_limit_gb * 2**30), **d.options)


def eval_image_size(cfg: Config, info) -> int:
    """``data.eval_size``, else the native size if it is at least the crop size, else the crop size
    (``info``: the dataset's :class:`relssl.data.DatasetInfo`)."""
    if cfg.data.eval_size:
        return cfg.data.eval_size
    crop = cfg.data.crop_size or info.crop_size
    native = cfg.data.image_size or info.native_size
    return native if native >= crop else crop


def build_backbone_from_config(cfg: Config, channels: int, maxpool_default: bool, weights: bool = True,
                               sizes: tuple[int, int] | None = None, module=None) -> Backbone:
    """The backbone of ``cfg.backbone`` for images of ``channels`` channels (a :class:`relssl.nn.Backbone`).

    ``maxpool_default``: the dataset's choice when ``backbone.maxpool`` is unset. ``weights``:
    load ``backbone.weights`` if set (evaluation rebuilds without it: its weights come from the
    checkpoint). ``sizes``: (crop, evaluation size): the model is sized for and run on them, so
    that a size it cannot take fails here, in one line. ``module``: the user's own module."""
    b = cfg.backbone
    maxpool = maxpool_default if b.maxpool is None else b.maxpool
    crop, eval_size = sizes if sizes is not None else (None, None)
    try:
        built = make_backbone(b.name, in_channels=channels, cifar_stem=b.cifar_stem, maxpool=maxpool,
                              bn_splits=b.bn_splits, kwargs=b.kwargs, image_size=crop, eval_size=eval_size,
                              module=module)
        if weights and b.weights:
            load_weights(built.module, b.weights, built.arch.get("head"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return built


def backbone_sizes(cfg: Config, info) -> tuple[int, int]:
    """(training crop, evaluation size) of ``cfg`` on a dataset of ``info``."""
    return cfg.data.crop_size or info.crop_size, eval_image_size(cfg, info)
