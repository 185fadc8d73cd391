"""ASCL plug-in (Feng & Patras, ICPR 2022): adaptive soft targets for MoCo v2 and BYOL hosts.

ASCL replaces the host's one-hot target:

* MoCo v2 host: InfoNCE over [positive key, queue] with the soft target of ``ascl_targets`` (the
  positive keeps weight 1, each queue entry gets min(nn_num * c * p, 1) with p the key's
  sharpened (t2) similarity distribution over the queue and c = 1 - H(p) / log K its confidence),
  logits at temperature t1. ``relation``: ascl (the method), ahcl (hard top-nn_num weighted by c),
  hard (top-nn_num, weight 1), moco (plain MoCo at temperature t1). K enters c through log K, so
  the official queue of 4096 is the default of every ASCL recipe.
* BYOL host: batch-internal soft targets, no queue (``ascl_byol_loss``), in place of each
  direction's regression term. The official form, which the ``byol_ascl`` recipes use, is one
  direction (the host's ``symmetric: false``: strong view online, weak view through the target)
  with the MoCo v2 projector (``proj_bn: false``, Linear -> ReLU -> Linear); ``symmetric: true``
  sums both directions at twice the encoder passes per step.

The official repository does not run as shipped (``NameError`` in ``ASCL.__init__``; its two
entry points pass ``--K`` as the queue size in one and the neighbour count in the other). We
read it as queue 4096 and ``nn_num`` = the neighbour multiplier (default 1; the README's
CIFAR-100 example uses 5).

Other hosts: none. ``attach`` replaces MoCo v2's ``contrast(q, k, queue)`` or BYOL's
``regress(p, zt)``, chosen by the host's name, and the config refuses any host outside ``hosts``;
MSF and NNCLR do not have a one-hot InfoNCE-with-queue target to soften.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from relssl.losses import ascl_byol_loss, ascl_loss
from relssl.methods.common import check_choice, check_positive
from relssl.nn import gather_no_grad, gather_with_grad

RELATIONS = ("ascl", "ahcl", "hard", "moco")


class ASCL(nn.Module):
    name = "ascl"
    hosts = ("mocov2", "byol")

    @dataclass
    class Config:
        t1: float = 0.1  # logits temperature (replaces the MoCo host's temperature)
        t2: float = 0.05  # sharpening temperature of the key-to-queue distribution
        nn_num: int = 1  # neighbour multiplier
        relation: str = "ascl"

        def validate(self) -> None:
            check_positive("t1", self.t1, prefix="plugins.ascl")
            check_positive("t2", self.t2, prefix="plugins.ascl")
            if self.nn_num < 1:
                from relssl.errors import ConfigError

                raise ConfigError(f"plugins.ascl.nn_num must be >= 1, got {self.nn_num}")
            check_choice("relation", self.relation, RELATIONS, prefix="plugins.ascl")

    def __init__(self, cfg: "ASCL.Config") -> None:
        super().__init__()
        self.cfg = cfg

    def attach(self, host: nn.Module) -> None:
        c = self.cfg
        if host.name == "mocov2":
            def contrast(q, k, queue):
                return ascl_loss(q, k, queue, t1=c.t1, t2=c.t2, nn_num=c.nn_num, relation=c.relation)

            host.contrast = contrast
        elif host.name == "byol":
            def regress(p, zt):
                # batch-internal targets over the global batch (identity with one process)
                return ascl_byol_loss(gather_with_grad(p), gather_no_grad(zt), t2=c.t2, nn_num=c.nn_num)

            host.regress = regress

    def after_host_step(self, host, views, info, out: dict) -> dict:
        if info.diagnose and host.name == "mocov2" and "_negative_labels" in out:
            # ASCL's soft targets over [positive key, queue] (rows sum to 1)
            from relssl.evaluate.diagnostics import ascl_candidate_labels
            from relssl.losses import ascl_targets
            from relssl.methods.diagnose import target_diagnostics

            c = self.cfg
            w = ascl_targets(out["_keys"], out["_negatives"], t2=c.t2, nn_num=c.nn_num, relation=c.relation)
            if info.labels is not None:
                cand = ascl_candidate_labels(info.labels, out["_negative_labels"])
                out.setdefault("_diag", {}).update(target_diagnostics(w, info, cand, prefix="ascl_target"))
        return out
