"""BYOL (Grill et al. 2020): online encoder + projector + predictor regressing an EMA target.

Spec: shared/methods/wcl-bsim-pnnclr-baselines.md section 4.3. Loss: the symmetric
``byol_loss`` (2 - 2cos(p1, zt2)) + (2 - 2cos(p2, zt1)). Target momentum follows BYOL's cosine
schedule from ``momentum`` to ``final_momentum`` (solo-learn CIFAR: 0.99 -> 1.0); set
``momentum_schedule: constant`` for a fixed rate. Views: BYOL's asymmetric pair by default.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.losses import byol_loss
from relssl.methods.common import StepInfo, check_choice, check_momentum, check_positive
from relssl.nn import byol_head, ema_update, make_teacher, momentum_at


class BYOL(nn.Module):
    name = "byol"
    default_views = ("byol_a", "byol_b")

    @dataclass
    class Config:
        proj_hidden: int = 4096
        proj_dim: int = 256
        pred_hidden: int = 4096
        momentum: float = 0.99
        final_momentum: float = 1.0
        momentum_schedule: str = "cosine"

        def validate(self) -> None:
            check_momentum("momentum", self.momentum)
            check_momentum("final_momentum", self.final_momentum)
            check_choice("momentum_schedule", self.momentum_schedule, ("constant", "cosine"))
            for key in ("proj_hidden", "proj_dim", "pred_hidden"):
                check_positive(key, getattr(self, key))

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "BYOL.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.online = nn.Sequential(OrderedDict(
            backbone=backbone, projector=byol_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)))
        self.predictor = byol_head(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.teacher = make_teacher(self.online)

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        p1, p2 = self.predictor(self.online(torch.cat([x1, x2]))).chunk(2)
        with torch.no_grad():
            zt1, zt2 = self.teacher(torch.cat([x1, x2])).chunk(2)
        loss = self.regress(p1, p2, zt1, zt2)
        return {"loss": loss, "_keys": zt2}  # "_keys": view 2's targets, for plug-ins (BSIM)

    def regress(self, p1, p2, zt1, zt2) -> torch.Tensor:
        """The symmetric regression term; the ASCL plug-in replaces it with soft batch targets."""
        return byol_loss(p1, p2, zt1, zt2)

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        """The online branch up to the predictor (for plug-ins that add views, e.g. BSIM)."""
        return self.predictor(self.online(x))

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        m = momentum_at(self.cfg.momentum, self.cfg.final_momentum, info.progress, self.cfg.momentum_schedule)
        ema_update(self.teacher, self.online, m)
