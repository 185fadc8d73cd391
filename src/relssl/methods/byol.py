"""BYOL (Grill et al. 2020): online encoder + projector + predictor regressing an EMA target.

Loss: the symmetric BYOL loss (2 - 2cos(p1, zt2)) + (2 - 2cos(p2, zt1)), each a batch mean. With
``symmetric: false`` only the first direction is trained: view 1 goes through the online network
and predictor, view 2 through the target, and each encoder sees one view per step (half the
encoder passes; the form ASCL's official BYOL host uses). Target momentum follows BYOL's cosine
schedule from ``momentum`` to ``final_momentum`` (solo-learn CIFAR: 0.99 -> 1.0); set
``momentum_schedule: constant`` for a fixed rate. The projector is ``Linear -> BN -> ReLU ->
Linear``; ``proj_bn: false`` drops its BatchNorm (the MoCo v2 projector ASCL's BYOL host uses);
the predictor always keeps it. Views: BYOL's asymmetric pair by default.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.losses import byol_regression
from relssl.methods.base import ENCODE_QUERY, KEYS, REGRESS, Method, StepInfo, register_method
from relssl.methods.common import check_choice, check_momentum, check_positive
from relssl.nn import byol_head, ema_update, make_teacher, moco_head, momentum_at


@register_method
class BYOL(Method):
    name = "byol"
    capabilities = frozenset({KEYS, ENCODE_QUERY, REGRESS})
    default_views = ("byol_a", "byol_b")

    @dataclass
    class Config:
        proj_hidden: int = 4096
        proj_dim: int = 256
        pred_hidden: int = 4096
        momentum: float = 0.99
        final_momentum: float = 1.0
        momentum_schedule: str = "cosine"
        symmetric: bool = True  # both directions; false: view 1 online -> view 2 target only
        proj_bn: bool = True  # BatchNorm in the projector's hidden layer (false: the MoCo v2 head)

        def validate(self) -> None:
            check_momentum("momentum", self.momentum)
            check_momentum("final_momentum", self.final_momentum)
            check_choice("momentum_schedule", self.momentum_schedule, ("constant", "cosine"))
            for key in ("proj_hidden", "proj_dim", "pred_hidden"):
                check_positive(key, getattr(self, key))

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "BYOL.Config") -> None:
        super().__init__()
        self.cfg = cfg
        head = byol_head if cfg.proj_bn else moco_head
        self.online = nn.Sequential(OrderedDict(
            backbone=backbone, projector=head(feat_dim, cfg.proj_hidden, cfg.proj_dim)))
        self.predictor = byol_head(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.teacher = make_teacher(self.online)

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        if not self.cfg.symmetric:
            p1 = self.predictor(self.online(x1))
            with torch.no_grad():
                zt2 = self.teacher(x2)
            return {"loss": self.regress(p1, zt2), "_keys": zt2}
        p1, p2 = self.predictor(self.online(torch.cat([x1, x2]))).chunk(2)
        with torch.no_grad():
            zt1, zt2 = self.teacher(torch.cat([x1, x2])).chunk(2)
        loss = self.regress(p1, zt2) + self.regress(p2, zt1)
        return {"loss": loss, "_keys": zt2}  # "_keys": view 2's targets, for plug-ins (BSIM)

    def regress(self, p: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        """One direction's term, predictions ``p`` against targets ``zt`` (2 - 2cos, batch mean);
        the ASCL plug-in replaces it with soft batch targets."""
        return byol_regression(p, zt)

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        """The online branch, predictor included (for plug-ins that add views, e.g. BSIM)."""
        return self.predictor(self.online(x))

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        m = momentum_at(self.cfg.momentum, self.cfg.final_momentum, info.progress, self.cfg.momentum_schedule)
        ema_update(self.teacher, self.online, m)
