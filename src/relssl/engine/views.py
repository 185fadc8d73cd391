"""The views of a training step: which augmentation recipes a run uses, and each step's seed.

The recipes come from the config (``views``), else from the method (its ``views_for_epoch``
choice, else its ``default_views``) plus the extra views the method derives from its config
(WCL's multi-crop). Every random draw of a step comes from a generator seeded by
:func:`step_seed` (seed, global step, rank), so a resumed run draws exactly the same views.
"""

from __future__ import annotations

from relssl.augment import recipe as make_recipe
from relssl.config import Config
from relssl.errors import ConfigError
from relssl.methods import METHODS


def view_recipes(cfg: Config, crop_size: int, names: list[str] | None = None):
    """The recipes of the views: ``cfg.views`` if set, else ``names`` (a method's choice for the
    current epoch), else the method's ``default_views``.

    A method may take views beyond its ``default_views`` that depend on its config (WCL's
    low-resolution multi-crops): its classmethod ``extra_views(method_section, crop_size,
    main_names)`` returns one ``(preset, overrides)`` pair per extra view, appended after the main
    views; those overrides (e.g. ``crop_size``, ``crop_scale``) win over ``augment.<preset>``. The
    names may then list the main views only (the extras get the method's presets) or the main
    views followed by one preset per extra view. Views may differ in size (``make_views`` groups
    them by size)."""
    cls = METHODS[cfg.method["name"]]
    if cfg.views is not None:
        names = list(cfg.views)
    elif names is None:
        names = list(cls.default_views)
    n_main = len(cls.default_views)
    extras = [] if len(names) < n_main else list(cls.extra_views(cfg.method, crop_size, list(names[:n_main])))
    if len(names) == n_main:
        names = names + [preset for preset, _ in extras]
    elif not extras or len(names) != n_main + len(extras):
        also = f", or {n_main} + {len(extras)} with one preset per extra view" if extras else ""
        raise ConfigError(
            f"views must name {n_main} recipes for {cls.name} "
            f"(default {list(cls.default_views)}){also}, got {names}"
        )
    per_view = [{}] * n_main + [dict(overrides) for _, overrides in extras]
    recipes = []
    for name, extra in zip(names, per_view):
        # the method's own recipe defaults (e.g. MSVQ's weak flip 0.9) under the user's overrides,
        # then what the method fixes for its extra views
        overrides = {"crop_size": crop_size, **cls.default_augment.get(name, {}),
                     **cfg.augment.get(name, {}), **extra}
        try:
            recipes.append(make_recipe(name, **overrides))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"views: {err}") from err
    return names, recipes


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)
