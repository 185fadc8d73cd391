"""Methods: ``nn.Module``s composed from ``relssl.nn`` parts and a ``relssl.losses`` loss.

Every method subclasses :class:`relssl.methods.base.Method`, which declares everything the engine,
the config and the plug-ins may call (``name``, ``default_views``, ``Config``, ``backbone``,
``training_step(views, info) -> StepOutput``, ``after_optimizer_step``, the optional hooks with
their defaults, and the ``capabilities`` plug-ins read); plug-ins subclass
:class:`relssl.methods.base.Plugin` (``relssl.methods.plugins``). ``METHODS`` is the registry by
name; adding a method means its own module (registered with ``@register_method``), its recipes and its
tests, and nothing else (docs/adding-a-method.md). Methods know nothing of Lightning, files or logging.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from relssl.errors import ConfigError
from relssl.methods.base import (
    METHODS,
    PLUGINS,
    Method,
    Plugin,
    StepInfo,
    StepOutput,
    register_method,
    register_plugin,
)
from relssl.schema import build_dataclass
# every module of this package but the contract's own helpers holds one method or plug-in, which
# registers itself (@register_method / @register_plugin): importing them fills METHODS and PLUGINS
_HELPERS = {"base", "common", "diagnose", "plugins"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _HELPERS:
        importlib.import_module(f"{__name__}.{_module}")


def method_config(section: dict) -> dict:
    """Validate a ``method:`` config section; returns it with every default filled in."""

    section = dict(section or {})
    name = section.pop("name", None)
    if name is None:
        raise ConfigError(f"method.name is missing; choose one of {', '.join(METHODS)}")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    params = build_dataclass(METHODS[name].Config, section, prefix="method")
    return {"name": name, **dataclasses.asdict(params)}


def build_method(section: dict, backbone, feat_dim: int):
    """Instantiate the method named in a validated ``method:`` section around ``backbone``."""

    section = dict(section)
    cls = METHODS[section.pop("name")]
    return cls(backbone, feat_dim, build_dataclass(cls.Config, section, prefix="method"))


__all__ = ["METHODS", "PLUGINS", "Method", "Plugin", "StepInfo", "StepOutput", "register_method", "register_plugin",
           "method_config", "build_method"]
