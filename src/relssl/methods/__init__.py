"""Methods: plain ``nn.Module``s composed from ``relssl.nn`` parts and a ``relssl.losses`` loss.

A method declares ``name``, ``default_views`` (one augmentation recipe per main view it takes), a
``Config`` dataclass of its options, ``backbone`` (the network evaluated downstream),
``training_step(views, info) -> {"loss": ..., other metrics}`` and
``after_optimizer_step(info)`` (EMA teachers). Entries of the returned dict whose key starts with
``_`` (``_keys``, ``_diag``, ...) go to plug-ins and the engine and are not logged. Optional hooks:
``default_augment`` (per-preset recipe defaults, under the user's ``augment:``) and the classmethod
``extra_views`` (config-dependent views after the main ones), both read by the engine's
``view_recipes``; ``views_for_epoch(epoch)``, asked by the engine at each epoch start unless the
config sets ``views``; the classmethod ``check_run_config(cfg)``, called by ``config_from_dict``
for checks across config sections; ``encode_query(x)``, the query / online branch for plug-ins.
It knows nothing of Lightning, files or logging.
"""

from __future__ import annotations

import dataclasses

from relssl.errors import ConfigError
from relssl.methods.byol import BYOL
from relssl.methods.common import StepInfo
from relssl.methods.mocov2 import MoCoV2
from relssl.methods.msf import MSF
from relssl.methods.msvq import MSVQ
from relssl.methods.nnclr import NNCLR
from relssl.methods.pnnclr import PNNCLR
from relssl.methods.ressl import ReSSL
from relssl.methods.simclr import SimCLR
from relssl.methods.wcl import WCL

METHODS: dict[str, type] = {cls.name: cls for cls in (SimCLR, MoCoV2, BYOL, WCL, MSVQ, ReSSL, MSF, NNCLR, PNNCLR)}


def method_config(section: dict) -> dict:
    """Validate a ``method:`` config section; returns it with every default filled in."""
    from relssl.config import build_dataclass

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
    from relssl.config import build_dataclass

    section = dict(section)
    cls = METHODS[section.pop("name")]
    return cls(backbone, feat_dim, build_dataclass(cls.Config, section, prefix="method"))


__all__ = ["METHODS", "StepInfo", "SimCLR", "MoCoV2", "BYOL", "WCL", "MSVQ", "ReSSL", "MSF", "NNCLR", "PNNCLR", "method_config", "build_method"]
