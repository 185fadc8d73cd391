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

Other hosts: none. ``attach`` replaces the host's ``contrast(q, k, queue)`` (MoCo v2) or
``regress(p, zt)`` (BYOL), chosen by the host's capabilities, and the config refuses a host with neither;
MSF and NNCLR do not have a one-hot InfoNCE-with-queue target to soften.
"""

from __future__ import annotations

from dataclasses import dataclass


from relssl.losses import ascl_byol_loss, ascl_loss
from relssl.methods.base import CONTRAST, QUEUE_NEGATIVES, REGRESS, Plugin, register_plugin
from relssl.methods.common import check_choice, check_positive
from relssl.nn import gather_no_grad, gather_with_grad

RELATIONS = ("ascl", "ahcl", "hard", "moco")


@register_plugin
class ASCL(Plugin):
    name = "ascl"
    # an InfoNCE-with-queue term to soften (MoCo v2), or a regression term to replace (BYOL)
    requires = (frozenset({CONTRAST}), frozenset({REGRESS}))

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

    def attach(self, host) -> None:
        c = self.cfg
        if CONTRAST in host.capabilities:
            def contrast(q, k, queue):
                return ascl_loss(q, k, queue, t1=c.t1, t2=c.t2, nn_num=c.nn_num, relation=c.relation)

            host.contrast = contrast
        else:  # REGRESS
            def regress(p, zt):
                # batch-internal targets over the global batch (identity with one process)
                return ascl_byol_loss(gather_with_grad(p), gather_no_grad(zt), t2=c.t2, nn_num=c.nn_num)

            host.regress = regress

    def after_host_step(self, host, views, info, out: dict) -> dict:
        if info.diagnose and {CONTRAST, QUEUE_NEGATIVES} <= host.capabilities and "_negative_labels" in out:
            # ASCL's soft targets over [positive key, queue] (rows sum to 1)
            from relssl.metrics.falseneg import ascl_candidate_labels
            from relssl.losses import ascl_targets
            from relssl.methods.diagnose import target_diagnostics

            c = self.cfg
            w = ascl_targets(out["_keys"], out["_negatives"], t2=c.t2, nn_num=c.nn_num, relation=c.relation)
            if info.labels is not None:
                cand = ascl_candidate_labels(info.labels, out["_negative_labels"])
                out.setdefault("_diag", {}).update(target_diagnostics(w, info, cand, prefix="ascl_target"))
        return out
