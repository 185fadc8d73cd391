"""MoCo v2 (Chen, Fan, Girshick, He 2020): query encoder, EMA key encoder, FIFO queue of keys.

Spec: docs/methods/mocov2.md (and docs/methods/small-data-recipe.md).
Step: q = n(g(f(x1))); k = n(g_k(f_k(x2))) with Shuffle-BN, no gradient; loss = InfoNCE of q
against [k, queue] (the queue as it was *before* this step); then the keys are enqueued.
The key encoder moves by EMA after every optimizer step (the same as MoCo's update at the start
of the next forward). ``symmetric`` adds the x2 -> x1 direction (pc-cp baselines); the queue is
then still updated once, with the keys of x2.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.losses import moco_loss, oracle_moco_loss
from relssl.methods.base import (
    CONTRAST,
    ENCODE_QUERY,
    FN_ORACLE,
    KEYS,
    QUEUE_NEGATIVES,
    TEMPERATURE,
    Method,
    StepInfo,
    oracle_labels,
    register_method,
)
from relssl.methods.common import check_momentum, check_positive
from relssl.methods.diagnose import queue_diagnostics
from relssl.nn import FeatureQueue, ema_update, make_teacher, moco_head, shuffle_forward


@register_method
class MoCoV2(Method):
    name = "mocov2"
    capabilities = frozenset({KEYS, QUEUE_NEGATIVES, ENCODE_QUERY, TEMPERATURE, CONTRAST, FN_ORACLE})
    default_views = ("strong", "strong")

    @dataclass
    class Config:
        temperature: float = 0.2
        queue_size: int = 4096
        momentum: float = 0.99
        proj_hidden: int = 2048
        proj_dim: int = 128
        symmetric: bool = False
        shuffle_bn: bool = True

        def validate(self) -> None:
            check_positive("temperature", self.temperature)
            check_positive("queue_size", self.queue_size)
            check_momentum("momentum", self.momentum)
            check_positive("proj_hidden", self.proj_hidden)
            check_positive("proj_dim", self.proj_dim)

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "MoCoV2.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.online = nn.Sequential(OrderedDict(
            backbone=backbone, projector=moco_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)))
        self.teacher = make_teacher(self.online)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def _keys(self, x: torch.Tensor, info: StepInfo) -> torch.Tensor:
        with torch.no_grad():
            if self.cfg.shuffle_bn:
                return shuffle_forward(self.teacher, x, info.generator)
            return self.teacher(x)

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        queue = self.queue.features.clone()  # the queue before this step's keys are written
        labels = oracle_labels(self, info)
        queue_labels = self.queue.labels.clone() if (labels is not None or info.diagnose) else None
        if labels is not None:  # the label-oracle control (plugins: [mask_false_negatives])
            def contrast(q, k, queue):
                return oracle_moco_loss(q, k, queue, labels, queue_labels, self.cfg.temperature, self.fn_oracle)
        else:
            contrast = self.contrast
        if self.cfg.symmetric:
            q1, q2 = self.online(torch.cat([x1, x2])).chunk(2)
            k1, k2 = self._keys(x1, info), self._keys(x2, info)
            loss = 0.5 * (contrast(q1, k2, queue) + contrast(q2, k1, queue))
        else:
            q1 = self.online(x1)
            k2 = self._keys(x2, info)
            loss = contrast(q1, k2, queue)
        self.queue.enqueue(k2, index=info.index, labels=info.labels, step=info.step)
        # "_" entries are for plug-ins (BSIM, ASCL) and the engine, not logged: the keys of view 2,
        # the queue used (and its labels on diagnostic steps), view 1's queries, the diagnostics
        out = {"loss": loss, "_keys": k2, "_negatives": queue, "_query": q1}
        if info.diagnose:
            out["_negative_labels"] = queue_labels
            out["_diag"] = queue_diagnostics(q1, k2, queue, queue_labels, info, self.cfg.temperature)
        return out

    def contrast(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """The InfoNCE-with-queue term; the ASCL plug-in replaces it with soft targets."""
        return moco_loss(q, k, queue, self.cfg.temperature)

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        """The query branch (for plug-ins that add views, e.g. BSIM's mixtures)."""
        return self.online(x)

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        ema_update(self.teacher, self.online, self.cfg.momentum)
