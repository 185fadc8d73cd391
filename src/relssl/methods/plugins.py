"""Plug-ins: modules that change a host method's objective (``plugins: [ascl]`` in a recipe).

A plug-in subclasses :class:`relssl.methods.base.Plugin`: ``name``, a ``Config`` dataclass,
``requires`` (the capability sets it can work with; its hosts are the methods that have every
capability of one set: :func:`hosts_of`), ``attach(host)`` (called once: e.g. ASCL swaps the host's
loss term) and ``after_host_step(host, views, info, out) -> out`` (called by the engine after the
host's ``training_step``: e.g. BSIM adds its mixture term to ``out["loss"]``). A plug-in with
``uses_labels = True`` (the label oracle) makes the engine refuse a pretraining split without
labels and write ``uses_labels: true`` into the run's results.
"""

from __future__ import annotations

import dataclasses

from relssl.errors import ConfigError
from relssl.schema import build_dataclass
from relssl.methods import METHODS, PLUGINS
from relssl.methods.oracle import FalseNegativeOracle

def hosts_of(plugin: type) -> tuple[str, ...]:
    """The registered methods a plug-in fits (by their capabilities), in registry order."""
    return tuple(name for name, cls in METHODS.items() if plugin.fits(cls))


def plugins_config(section, method_name: str) -> dict:
    """Validate ``plugins:`` (a list of names, or a mapping name -> options); returns name -> options."""

    if section is None:
        return {}
    if isinstance(section, (list, tuple)):
        twice = sorted({str(name) for name in section if list(section).count(name) > 1})
        if twice:
            raise ConfigError(f"plugins lists {', '.join(twice)} more than once; list each plug-in once")
        section = {name: {} for name in section}
    if not isinstance(section, dict):
        raise ConfigError(f"plugins must be a list of names or a mapping of name -> options, got {section!r}")
    out = {}
    for name, options in section.items():
        if name not in PLUGINS:
            raise ConfigError(f"unknown plugin {name!r}; available: {', '.join(PLUGINS)}")
        cls = PLUGINS[name]
        if not cls.fits(METHODS[method_name]):
            raise ConfigError(f"plugin {name} does not fit method {method_name}; its hosts: {', '.join(hosts_of(cls))}")
        opts = build_dataclass(cls.Config, options or {}, prefix=f"plugins.{name}")
        out[name] = dataclasses.asdict(opts)
    if "ascl" in out and FalseNegativeOracle.name in out:
        raise ConfigError("plugins ascl and mask_false_negatives do not combine (ASCL replaces the loss the oracle "
                          "masks); use one of them")
    return out


def build_plugins(section: dict, host) -> list:
    """Instantiate validated plug-ins and attach them to ``host``, in the order given."""

    plugins = []
    for name, options in (section or {}).items():
        cls = PLUGINS[name]
        plugin = cls(build_dataclass(cls.Config, options, prefix=f"plugins.{name}"))
        plugin.attach(host)
        plugins.append(plugin)
    return plugins
