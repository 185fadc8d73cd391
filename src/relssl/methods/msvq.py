"""MSVQ (Peng, Long, Li; KBS 2024): multiple sample views and queues, relational distillation.

Spec: docs/methods/small-data-recipe.md and docs/methods/msvq.md (official code pc-cp/MSVQ,
``network/msvq.py``). A student (backbone + MoCo-v2 head ``Linear -> ReLU -> Linear``, no BN)
sees one strong view x1; two EMA teachers (deep copies of the student, constant momenta ``m1``,
``m2``; teacher 2 is the faster-moving one in the README recipes) see three weak views:
teacher 1 encodes x2 and x3, teacher 2 encodes x4, each view in its own Shuffle-BN forward
(as the official code does; with SplitBN that decides which samples share statistics).
Queue 1 receives teacher 1's embeddings of x2, queue 2 teacher 2's embeddings of x4 (x3 is
never enqueued). The loss is ``relssl.losses.msvq_loss``: the mean of three cross-entropies
between the teachers' sharpened similarity distributions over "their" queue (tau_t) and the
student's (tau_s), computed against the queues as they were *before* this step's keys are
written (a snapshot is taken, then the keys are enqueued with index / label / step).

Choices:

* Momenta, tau_t and queue size default to the README's CIFAR-10 command (m1 0.99, m2 0.95,
  tau_t 0.04, K 4096), not the argparse defaults (m1 0.95, m2 0.99, tem 0.1): docs/methods/msvq.md.
* tau_s is a parameter (the code hard-codes 0.1): docs/methods/msvq.md.
* CE, not KL (same gradient; the loss value is higher by the teacher entropy): docs/methods/msvq.md.
* EMA: the official code updates the teachers at the start of every forward, before the loss.
  Here :meth:`after_optimizer_step` does it after every optimizer step: the same sequence of
  teacher weights (the update before step t+1's forward uses the student after step t; at step
  0 the teachers equal the student, so the official first update is a no-op).
* Weak views: the official runs flip with p = 0.9 (``RandomHorizontalFlip(0.9)``, docs/methods/msvq.md).
  This is set through the view recipes: the packaged recipes say
  ``augment: {weak: {flip_p: 0.9}}``, and ``default_augment`` makes it the method's default:
  the engine applies it under the user's ``augment:`` section, so a run without a packaged recipe
  gets 0.9 too (``augment.weak.flip_p=0.5`` for the common value).
* Monitoring: ``target_entropy`` (mean entropy, in nats, of teacher 1's soft label for x2 over
  queue 1; ``log K`` = uniform, 0 = one-hot) and ``target_max`` (its mean largest probability).
  One extra (N x K) product, no host synchronisation.

ReSSL (the one-teacher, one-queue special case) lives in ``ressl.py`` and reuses the
helpers below.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.losses import msvq_loss, relation_targets
from relssl.methods.base import Method, StepInfo, register_method
from relssl.methods.common import check_momentum, check_positive
from relssl.methods.diagnose import target_diagnostics
from relssl.metrics.falseneg import target_stats
from relssl.nn import FeatureQueue, ema_update, make_teacher, moco_head, teacher_forward

@register_method
class MSVQ(Method):
    name = "msvq"
    default_views = ("strong", "weak", "weak", "weak")  # x1 student; x2, x3 teacher 1; x4 teacher 2
    default_augment = {"weak": {"flip_p": 0.9}}  # official weak flip (see the module docstring)

    @dataclass
    class Config:
        m1: float = 0.99  # teacher 1 (views 2, 3; queue 1)
        m2: float = 0.95  # teacher 2 (view 4; queue 2)
        tau_t: float = 0.04
        tau_s: float = 0.1
        queue_size: int = 4096
        proj_hidden: int = 2048
        proj_dim: int = 128
        shuffle_bn: bool = True

        def validate(self) -> None:
            check_momentum("m1", self.m1)
            check_momentum("m2", self.m2)
            for key in ("tau_t", "tau_s", "queue_size", "proj_hidden", "proj_dim"):
                check_positive(key, getattr(self, key))

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "MSVQ.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.student = nn.Sequential(OrderedDict(
            backbone=backbone, projector=moco_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)))
        self.teacher1 = make_teacher(self.student)
        self.teacher2 = make_teacher(self.student)
        self.queue1 = FeatureQueue(cfg.queue_size, cfg.proj_dim)
        self.queue2 = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    @property
    def backbone(self) -> nn.Module:
        return self.student.backbone

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2, x3, x4 = views
        c = self.cfg
        z1 = self.student(x1)
        z2 = teacher_forward(self.teacher1, x2, info.generator, c.shuffle_bn)
        z3 = teacher_forward(self.teacher1, x3, info.generator, c.shuffle_bn)
        z4 = teacher_forward(self.teacher2, x4, info.generator, c.shuffle_bn)
        # the queues before this step's keys are written
        q1, q2 = self.queue1.features.clone(), self.queue2.features.clone()
        loss = msvq_loss(z1, z2, z3, z4, q1, q2, tau_t=c.tau_t, tau_s=c.tau_s)
        targets = relation_targets(z2, q1, c.tau_t)
        out = {"loss": loss, **target_stats(targets)}
        if info.diagnose:  # teacher 1's soft label over queue 1 (before this step's write)
            out["_diag"] = target_diagnostics(targets, info, self.queue1.labels.clone())
        self.queue1.enqueue(z2, index=info.index, labels=info.labels, step=info.step)
        self.queue2.enqueue(z4, index=info.index, labels=info.labels, step=info.step)
        return out

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        ema_update(self.teacher1, self.student, self.cfg.m1)
        ema_update(self.teacher2, self.student, self.cfg.m2)
