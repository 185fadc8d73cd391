"""The method and plug-in contract: everything the engine, the config and the plug-ins may call.

A **method** subclasses :class:`Method` and provides

* ``name``, ``default_views`` (one augmentation recipe name per main view it takes) and a
  ``Config`` dataclass of its options (checked by ``relssl.schema.build_dataclass``; an optional
  ``validate()`` raises :class:`relssl.errors.ConfigError`);
* ``__init__(backbone, feat_dim, cfg)``, the ``backbone`` property (the network evaluated
  downstream), ``training_step(views, info) -> StepOutput``;
* optionally: ``after_optimizer_step(info)`` (EMA teachers), ``views_for_epoch(epoch)``,
  ``default_augment`` (per-recipe defaults under the user's ``augment:``), the classmethods
  ``extra_views(section, crop_size, main_names)`` (config-dependent views after the main ones) and
  ``check_run_config(cfg)`` (checks across config sections), each with a do-nothing default here;
* ``capabilities``: what it offers plug-ins (the constants below), each checked when the class
  is defined.

A **plug-in** subclasses :class:`Plugin`: ``name``, ``Config``, ``requires`` (the capability sets
it can work with: a method fits if it has every capability of at least one set), ``attach(host)``,
``after_host_step(host, views, info, out) -> out`` and ``uses_labels``. Plug-ins choose what to
do by the host's capabilities, never by its name, so a new method that declares a capability
gets the plug-ins that need it without any change to them.

Methods know nothing of Lightning, files or logging; they receive views already on the device
and a :class:`StepInfo`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, TypedDict

import torch
from torch import Tensor, nn

from relssl.errors import TrainingError

# ----------------------------------------------------------------------------- capabilities

KEYS = "keys"
"""``training_step`` returns ``_keys``: (B, D) view 2's keys / targets, the positive of row i."""
QUEUE_NEGATIVES = "queue_negatives"
"""``training_step`` returns ``_negatives`` (K, D), the queue as the loss used it (before this step's
write), and on diagnostic steps ``_negative_labels`` (K,), the labels stored beside it."""
ENCODE_QUERY = "encode_query"
"""``encode_query(x)`` maps images through the trained branch into the space of ``_keys``."""
TEMPERATURE = "temperature"
"""``cfg.temperature`` is the temperature of the method's InfoNCE-type loss."""
CONTRAST = "contrast"
"""``contrast(q, k, queue)`` is the InfoNCE-with-queue term, which a plug-in may replace."""
REGRESS = "regress"
"""``regress(p, zt)`` is one direction's regression term (no temperature), which a plug-in may replace."""
FN_ORACLE = "fn_oracle"
"""The loss is InfoNCE-type and follows ``self.fn_oracle`` (None, or the label oracle's mode)."""

CAPABILITIES = frozenset({KEYS, QUEUE_NEGATIVES, ENCODE_QUERY, TEMPERATURE, CONTRAST, REGRESS, FN_ORACLE})


# ----------------------------------------------------------------------------- what a step gets and returns


@dataclass
class StepInfo:
    """Context of one training step, handed to a method by the engine.

    ``index`` are the dataset indices of the batch (stored beside queue entries for diagnostics;
    NNCLR's ``exclude_self`` also searches with them), ``labels`` the class labels when the dataset
    has them (monitoring only: no method trains on them, except under the label-oracle control
    ``plugins: [mask_false_negatives]``, see ``relssl.methods.oracle``), ``step`` the global
    optimizer step, ``progress`` = step / total steps in [0, 1], and ``generator`` the seeded random
    source of this step (shuffle-BN permutations and the like). ``diagnose``: the engine asks for
    false-negative diagnostics this step (a method may then return them under ``out["_diag"]``, see
    ``relssl.methods.diagnose``). ``after_optimizer_step`` gets only ``step`` (already advanced past
    the optimizer step) and ``progress``.
    """

    step: int
    progress: float
    index: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    generator: torch.Generator | None = None
    diagnose: bool = False


class StepOutput(TypedDict, total=False):
    """What ``training_step`` returns (a plain dict). ``loss`` is required. Every other key without
    a leading ``_`` is a 0-d tensor the engine logs as ``train/<key>``; keys with a leading ``_``
    are handed to plug-ins and the engine and never logged."""

    loss: Tensor
    _keys: Tensor  # KEYS
    _negatives: Tensor  # QUEUE_NEGATIVES
    _negative_labels: Tensor  # QUEUE_NEGATIVES, diagnostic steps only
    _query: Tensor  # view 1's queries (MoCo v2)
    _diag: dict[str, Tensor]  # false-negative diagnostics, on the steps info.diagnose asks for


# ----------------------------------------------------------------------------- the contract


def _overrides(cls: type, base: type, attr: str) -> bool:
    return getattr(cls, attr, None) is not getattr(base, attr, None)


class Method(nn.Module):
    """Base class of every method (see the module docstring for the whole contract)."""

    name: ClassVar[str]
    default_views: ClassVar[tuple[str, ...]]
    Config: ClassVar[type]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    default_augment: ClassVar[dict[str, dict]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        where = f"{cls.__module__}.{cls.__qualname__}"
        for attr in ("name", "default_views", "Config"):
            if not hasattr(cls, attr):
                raise TypeError(f"{where} must define {attr} (see relssl.methods.base.Method)")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{where}.Config must be a dataclass")
        if not cls.default_views or not all(isinstance(v, str) for v in cls.default_views):
            raise TypeError(f"{where}.default_views must be a non-empty tuple of recipe names")
        unknown = set(cls.capabilities) - CAPABILITIES
        if unknown:
            raise TypeError(f"{where} declares unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        needs = {ENCODE_QUERY: "encode_query", CONTRAST: "contrast", REGRESS: "regress"}
        for cap, attr in needs.items():
            if cap in cls.capabilities and not _overrides(cls, Method, attr):
                raise TypeError(f"{where} declares capability {cap!r} but does not define {attr}()")
        if TEMPERATURE in cls.capabilities and "temperature" not in {f.name for f in dataclasses.fields(cls.Config)}:
            raise TypeError(f"{where} declares capability 'temperature' but its Config has no temperature")
        if not _overrides(cls, Method, "training_step"):
            raise TypeError(f"{where} must define training_step(views, info)")

    @property
    def backbone(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define the backbone property")

    def training_step(self, views: list[Tensor], info: StepInfo) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, info: StepInfo) -> None:
        """Called after every optimizer step (EMA teachers); nothing by default."""

    def views_for_epoch(self, epoch: int) -> list[str] | None:
        """The view recipes of this epoch, or None to keep the current ones (the default)."""
        return None

    @classmethod
    def extra_views(cls, section: dict, crop_size: int, main_names: list[str]) -> list[tuple[str, dict]]:
        """Views after the main ones that depend on the config: one ``(preset, overrides)`` each."""
        return []

    @classmethod
    def check_run_config(cls, cfg) -> None:
        """Checks across config sections (``cfg``: a :class:`relssl.config.Config`); none by default."""

    def encode_query(self, x: Tensor) -> Tensor:  # ENCODE_QUERY
        raise NotImplementedError(f"{self.name} does not offer encode_query")

    def contrast(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:  # CONTRAST
        raise NotImplementedError(f"{self.name} does not offer contrast")

    def regress(self, p: Tensor, zt: Tensor) -> Tensor:  # REGRESS
        raise NotImplementedError(f"{self.name} does not offer regress")


class Plugin(nn.Module):
    """Base class of every plug-in (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    requires: ClassVar[tuple[frozenset[str], ...]] = ()
    uses_labels: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        where = f"{cls.__module__}.{cls.__qualname__}"
        for attr in ("name", "Config"):
            if not hasattr(cls, attr):
                raise TypeError(f"{where} must define {attr} (see relssl.methods.base.Plugin)")
        if not cls.requires:
            raise TypeError(f"{where}.requires must name at least one set of capabilities")
        for need in cls.requires:
            unknown = set(need) - CAPABILITIES
            if unknown:
                raise TypeError(f"{where} requires unknown capabilities {sorted(unknown)}")

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg

    @classmethod
    def fits(cls, method: type[Method] | Method) -> bool:
        """True when ``method`` has every capability of at least one of ``requires``."""
        caps = set(method.capabilities)
        return any(set(need) <= caps for need in cls.requires)

    def attach(self, host: Method) -> None:
        """Called once, after the host is built (e.g. to replace its loss term); nothing by default."""

    def after_host_step(self, host: Method, views: list[Tensor], info: StepInfo, out: StepOutput) -> StepOutput:
        """Called after the host's ``training_step``; returns the (changed) output. Unchanged by default."""
        return out


# ----------------------------------------------------------------------------- the registries

METHODS: dict[str, type[Method]] = {}
"""Every registered method by name (``method.name`` in a config); see :func:`register_method`."""
PLUGINS: dict[str, type[Plugin]] = {}
"""Every registered plug-in by name (``plugins:`` in a config); see :func:`register_plugin`."""


def _register(registry: dict, cls: type, base: type, kind: str) -> type:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"register_{kind} takes a subclass of relssl.methods.base.{base.__name__}, got {cls!r}")
    other = registry.get(cls.name)
    if other is not None and other is not cls:
        raise TypeError(f"a {kind} named {cls.name!r} is already registered ({other.__module__}.{other.__qualname__})")
    registry[cls.name] = cls
    return cls


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a :class:`Method` available as ``method.name: <cls.name>`` in configs.

    relssl's own methods register themselves in their modules; a method of your own registers the
    same way once its module is imported (docs/adding-a-method.md)."""
    return _register(METHODS, cls, Method, "method")


def register_plugin(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make a :class:`Plugin` available under ``plugins:`` in configs."""
    return _register(PLUGINS, cls, Plugin, "plugin")


def oracle_labels(host: Method, info: StepInfo) -> Tensor | None:
    """The batch's labels when ``host`` runs under the label oracle (``host.fn_oracle`` set by the
    ``mask_false_negatives`` plug-in), else None."""
    if getattr(host, "fn_oracle", None) is None:
        return None
    if info.labels is None:
        raise TrainingError("plugin mask_false_negatives needs class labels for the pretraining images; "
                            "use a labelled dataset or remove the plug-in")
    return info.labels

