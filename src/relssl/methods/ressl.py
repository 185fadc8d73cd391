"""ReSSL (Zheng et al. 2021) as re-implemented by the MSVQ authors: one teacher, one queue, one soft label.

Spec: docs/methods/ressl.md, ReSSL row (pc-cp/Benchmark-Methods-For-MNN,
``network/ReSSL.py``), with the small-data recipe (docs/methods/small-data-recipe.md). The student (backbone + MoCo-v2 head, no BN)
sees the strong view, the EMA teacher (constant momentum) the weak view with Shuffle-BN. Loss:
``CE(softmax(n(z_k) Q^T / tau_t), softmax(n(z_q) Q^T / tau_s))`` over the queue Q *before* this
step's keys are written (MemoryBankModule returns the old bank, then writes) = one term of MSVQ
(``relssl.losses.relation_ce``). Then the teacher's embeddings are enqueued.

Choices: asymmetric (the pc-cp default; its ``symmetric`` flag is not offered). tau_t 0.04,
tau_s 0.1 (hard-coded there), m 0.99 (CIFAR; 0.996 on STL-10 / Tiny ImageNet in the recipes), K
4096 (16384 on STL-10 / Tiny ImageNet). The EMA runs after every optimizer step (the pc-cp code
does it at the start of the next forward: the same sequence of teacher weights). Weak views flip
with p = 0.9 like every pc-cp baseline: ReSSL's ``default_augment`` makes it the default, under
the user's ``augment:`` section, as in MSVQ (the packaged recipes also say
``augment.weak.flip_p: 0.9``). Monitoring: ``target_entropy`` and ``target_max`` of the teacher's
soft label, as in MSVQ.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.methods.base import Method, StepInfo, register_method
from relssl.methods.common import check_momentum, check_positive
from relssl.methods.diagnose import target_diagnostics
from relssl.losses import relation_ce, relation_targets
from relssl.metrics.falseneg import target_stats
from relssl.nn import FeatureQueue, ema_update, make_teacher, moco_head, teacher_forward


@register_method
class ReSSL(Method):
    name = "ressl"
    default_views = ("strong", "weak")  # x1 student, x2 teacher
    default_augment = {"weak": {"flip_p": 0.9}}

    @dataclass
    class Config:
        momentum: float = 0.99
        tau_t: float = 0.04
        tau_s: float = 0.1
        queue_size: int = 4096
        proj_hidden: int = 2048
        proj_dim: int = 128
        shuffle_bn: bool = True

        def validate(self) -> None:
            check_momentum("momentum", self.momentum)
            for key in ("tau_t", "tau_s", "queue_size", "proj_hidden", "proj_dim"):
                check_positive(key, getattr(self, key))

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "ReSSL.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.student = nn.Sequential(OrderedDict(
            backbone=backbone, projector=moco_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)))
        self.teacher = make_teacher(self.student)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    @property
    def backbone(self) -> nn.Module:
        return self.student.backbone

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        c = self.cfg
        zq = self.student(x1)
        zk = teacher_forward(self.teacher, x2, info.generator, c.shuffle_bn)
        queue = self.queue.features.clone()  # the queue before this step's keys are written
        loss = relation_ce(zq, zk, queue, tau_t=c.tau_t, tau_s=c.tau_s)
        targets = relation_targets(zk, queue, c.tau_t)
        out = {"loss": loss, **target_stats(targets)}
        if info.diagnose:  # the teacher's soft label over the queue (before this step's write)
            out["_diag"] = target_diagnostics(targets, info, self.queue.labels.clone())
        self.queue.enqueue(zk, index=info.index, labels=info.labels, step=info.step)
        return out

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        ema_update(self.teacher, self.student, self.cfg.momentum)
