"""MSF, Mean Shift (Koohpayegani, Tejankar, Pirsiavash; ICCV 2021): BYOL towards the target's neighbours.

Spec: docs/methods/msf.md (official code UMBCvision/MSF,
``train_msf.py``, ``MeanShift.forward``), with the small-data recipe (docs/methods/small-data-recipe.md) in the packaged
configs. Online network: backbone + projection MLP ``Linear(f, 2f) -> BN -> ReLU -> Linear(2f, f/4)``
+ prediction MLP ``Linear(f/4, 2f) -> BN -> ReLU -> Linear(2f, f/4)`` (f = backbone feature size;
ResNet-18: 512 -> 1024 -> 128 and 128 -> 1024 -> 128; ``proj_hidden`` / ``proj_dim`` /
``pred_hidden`` = null follow this rule). Target: EMA copy of backbone + projection, constant
momentum 0.99, Shuffle-BN on its input. Memory bank: a ``FeatureQueue`` of normalised target
embeddings (index / label / step beside each row).

Step, in the **official order**: ``t`` = target embedding of the target view; **t is written to
the bank first**, then the bank is searched for the ``topk`` nearest rows of each ``t`` and
``relssl.losses.msf_loss(p, t, bank, topk)`` regresses the online prediction ``p`` onto them. So
every target finds itself as its first neighbour and ``topk = 1`` is BYOL's ``2 - 2 cos(p, t)``.
(The pc-cp re-implementation searches first and adds the target explicitly; a different loss,
not this one: docs/methods/msf.md.)

Choices:

* Views: ``default_views = (query, target) = ("strong", "weak")``, i.e. the paper's "MSF w/s"
  (``--augmentation weak/strong`` = target weak, query strong); the weak flip keeps the official
  p = 0.5 (the pc-cp baselines use 0.9: ``augment.weak.flip_p``).
* Bank size: as large as memory allows (the official ImageNet runs use 128K and 1.024M); the default
  and the small-data recipes use 16384. No ``K % batch`` assertion, but K must be ``>= topk``
  (``Config.validate``) and ``>= the global batch`` (``check_run_config``, before any work):
  because the batch is written before the search, a smaller bank would keep only the batch's
  last K targets and the others would not find themselves.
* EMA after every optimizer step (official: inside the target branch of the next forward; the
  same sequence of target weights). The 1/topk averaging of the official code is kept.
* Monitoring, when labels are given: ``purity`` = fraction of the (row, neighbour) pairs of the
  top-k whose stored label equals the row's label, over pairs with a stored label (empty or
  unlabelled rows, label -1, are ignored). As in the official code the target's own row counts.
  Costs one extra (N x K) product; no host synchronisation.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.errors import ConfigError
from relssl.losses import msf_loss
from relssl.methods.base import Method, StepInfo, register_method
from relssl.methods.common import check_momentum, check_positive
from relssl.metrics.falseneg import topk_neighbour_purity
from relssl.nn import FeatureQueue, byol_head, ema_update, make_teacher, teacher_forward


@register_method
class MSF(Method):
    name = "msf"
    default_views = ("strong", "weak")  # view 0: query (online), view 1: target

    @dataclass
    class Config:
        topk: int = 5
        queue_size: int = 16384  # memory bank rows
        momentum: float = 0.99
        proj_hidden: int | None = None  # null: 2 * feature size
        proj_dim: int | None = None  # null: feature size // 4
        pred_hidden: int | None = None  # null: 2 * feature size
        shuffle_bn: bool = True

        def validate(self) -> None:
            check_positive("topk", self.topk)
            check_positive("queue_size", self.queue_size)
            if self.topk > self.queue_size:
                raise ConfigError(f"method.topk ({self.topk}) must be <= method.queue_size ({self.queue_size})")
            check_momentum("momentum", self.momentum)
            for key in ("proj_hidden", "proj_dim", "pred_hidden"):
                if getattr(self, key) is not None:
                    check_positive(key, getattr(self, key))

    @classmethod
    def check_run_config(cls, cfg) -> None:
        """The official order writes the global batch into the bank before searching it: the bank
        must hold the whole global batch, or this step's first targets are overwritten before the
        search and no longer find themselves."""
        batch = cfg.optim.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes
        if cfg.method["queue_size"] < batch:
            raise ConfigError(
                f"method.queue_size ({cfg.method['queue_size']}) must be >= the global batch ({batch}) for msf: "
                "the bank receives the batch's targets before the top-k search"
            )

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "MSF.Config") -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.proj_hidden or 2 * feat_dim
        dim = cfg.proj_dim or max(1, feat_dim // 4)
        self.online = nn.Sequential(OrderedDict(backbone=backbone, projector=byol_head(feat_dim, hidden, dim)))
        self.predictor = byol_head(dim, cfg.pred_hidden or 2 * feat_dim, dim)
        self.target = make_teacher(self.online)
        self.bank = FeatureQueue(cfg.queue_size, dim)

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        xq, xt = views
        p = self.predictor(self.online(xq))
        t = teacher_forward(self.target, xt, info.generator, self.cfg.shuffle_bn)
        # official order: write this step's targets first, then search the bank
        self.bank.enqueue(t, index=info.index, labels=info.labels, step=info.step)
        loss = msf_loss(p, t, self.bank.features, topk=self.cfg.topk)
        out = {"loss": loss}
        if info.labels is not None:
            out["purity"] = topk_neighbour_purity(self.bank, t, info.labels, self.cfg.topk)
        return out

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        ema_update(self.target, self.online, self.cfg.momentum)
