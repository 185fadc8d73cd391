"""BSIM plug-in (Chu, Zhan, Wei): mixture "spurious-positive" pairs for SimCLR, MoCo v2 and BYOL.

Spec: docs/methods/bsim.md. **This is a reconstruction**: no
official code exists, and only the paper's abstract could be read. Every open choice is an
option, with the default we chose:

* the mixture: view ``source_view`` (default 0, the query / online view) of image i mixed with
  the same view of its partner perm[i], built on the device from the batch; ``mix``: mixup
  (default), cutmix, or both (each sample one of the two at random); ``partner``: reverse batch
  order (default, as Un-Mix) or a random permutation; lambda ~ Beta(alpha, alpha), alpha = 1.
* it is encoded by the host's query / online branch (``host.encode_query``: SimCLR's encoder +
  head, MoCo's query encoder, BYOL's online network + predictor);
* the term: contrastive hosts: soft-target InfoNCE of the mixture against the clean keys of view 2
  (lambda on key i, 1 - lambda on key perm[i]), the host's temperature unless ``temperature`` is
  set, MoCo's queue (before this step's keys) as extra negatives (``use_queue``); keys carry no
  gradient (``detach_keys``; MoCo's keys never do). BYOL: lambda-weighted regression to the
  targets of i and perm[i] (``bsim_byol_loss``).
* total = host loss + ``weight`` * term (weight 1).

Not reconstructed (unverifiable here): a symmetrised version against both views, other weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from relssl.augment.mix import MIX_MODES, mix_batch, partner_permutation, sample_lambda
from relssl.losses import bsim_byol_loss, bsim_infonce_loss
from relssl.methods.base import ENCODE_QUERY, KEYS, QUEUE_NEGATIVES, REGRESS, TEMPERATURE, Plugin, register_plugin
from relssl.methods.common import check_choice, check_positive
from relssl.nn import gather_no_grad, gather_with_grad, rank, world_size


@register_plugin
class BSIM(Plugin):
    name = "bsim"
    # mixtures through the host's query branch against its keys: a contrastive host (its temperature)
    # or a regression host
    requires = (frozenset({ENCODE_QUERY, KEYS, TEMPERATURE}), frozenset({ENCODE_QUERY, KEYS, REGRESS}))

    @dataclass
    class Config:
        weight: float = 1.0
        alpha: float = 1.0
        mix: str = "mixup"
        partner: str = "reverse"
        source_view: int = 0
        temperature: float | None = None  # None: the host's temperature
        use_queue: bool = True
        detach_keys: bool = True

        def validate(self) -> None:
            check_positive("alpha", self.alpha, prefix="plugins.bsim")
            check_choice("mix", self.mix, MIX_MODES, prefix="plugins.bsim")
            check_choice("partner", self.partner, ("reverse", "random"), prefix="plugins.bsim")
            if self.weight < 0:
                from relssl.errors import ConfigError

                raise ConfigError(f"plugins.bsim.weight must be >= 0, got {self.weight}")
            if self.temperature is not None:
                check_positive("temperature", self.temperature, prefix="plugins.bsim")
            if self.source_view not in (0, 1):
                from relssl.errors import ConfigError

                raise ConfigError(f"plugins.bsim.source_view must be 0 or 1, got {self.source_view}")

    def after_host_step(self, host, views, info, out: dict) -> dict:
        c = self.cfg
        # Mixtures are built over the global batch (partners may sit on another process), drawn on
        # rank 0 and broadcast; each process encodes its own rows, and the term is evaluated on the
        # gathered global batch (every gather is the identity with one process).
        x = views[c.source_view]
        b = x.shape[0]
        x_all = gather_no_grad(x)
        n = x_all.shape[0]
        perm = partner_permutation(n, c.partner, info.generator, x.device)
        lam = sample_lambda(n, c.alpha, info.generator, x.device, salt=0xB51)
        x_mix, lam = mix_batch(x_all, perm, lam, c.mix, info.generator)
        if world_size() > 1:
            for t in (perm, lam, x_mix):
                dist.broadcast(t, src=0)
        r = rank()
        q_mix = gather_with_grad(host.encode_query(x_mix[r * b : (r + 1) * b].contiguous()))
        keys = out["_keys"]
        keys = gather_with_grad(keys) if keys.requires_grad else gather_no_grad(keys)
        if REGRESS in host.capabilities:
            term = bsim_byol_loss(q_mix, keys, perm, lam)
        else:
            tau = c.temperature if c.temperature is not None else host.cfg.temperature
            negatives = out.get("_negatives") if c.use_queue and QUEUE_NEGATIVES in host.capabilities else None
            term = bsim_infonce_loss(q_mix, keys, perm, lam, tau, negatives, detach_keys=c.detach_keys)
        out["loss"] = out["loss"] + c.weight * term
        out["bsim"] = term.detach()
        if info.diagnose:  # how the mixture's similarity to its two sources follows lambda
            from relssl.methods.diagnose import mixture_diagnostics

            out.setdefault("_diag", {}).update(mixture_diagnostics(q_mix, keys, perm, lam))
        return out
