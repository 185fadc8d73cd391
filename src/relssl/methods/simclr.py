"""SimCLR (Chen et al. 2020): one encoder, two views, NT-Xent over the 2B embeddings.

Spec: docs/methods/simclr.md. Head: Linear -> BN -> ReLU ->
Linear (SimCLR v1). Temperature 0.2 by default (the solo-learn and pc-cp CIFAR recipes; the
loss function's own default is lightly's 0.5).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.losses import ntxent_loss, oracle_ntxent_loss
from relssl.methods.base import (
    ENCODE_QUERY,
    FN_ORACLE,
    KEYS,
    TEMPERATURE,
    Method,
    StepInfo,
    oracle_labels,
    register_method,
)
from relssl.methods.common import check_positive
from relssl.methods.diagnose import batch_diagnostics
from relssl.nn import gather_no_grad, gather_with_grad, simclr_head


@register_method
class SimCLR(Method):
    name = "simclr"
    capabilities = frozenset({KEYS, ENCODE_QUERY, TEMPERATURE, FN_ORACLE})
    default_views = ("simclr", "simclr")

    @dataclass
    class Config:
        temperature: float = 0.2
        proj_hidden: int = 2048
        proj_dim: int = 128

        def validate(self) -> None:
            check_positive("temperature", self.temperature)
            check_positive("proj_hidden", self.proj_hidden)
            check_positive("proj_dim", self.proj_dim)

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "SimCLR.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.online = nn.Sequential(OrderedDict(
            backbone=backbone, projector=simclr_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)))

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        z = self.online(torch.cat([x1, x2]))  # one forward: both views share BN statistics
        z1, z2 = z.chunk(2)
        # NT-Xent over the global batch (rows in rank order; identity with one process): with the
        # summing backward of gather_with_grad and DDP's averaging, the gradient is one process's
        g1, g2 = gather_with_grad(torch.stack([z1, z2], dim=1)).unbind(1)
        labels = oracle_labels(self, info)
        if labels is None:
            loss = ntxent_loss(g1, g2, temperature=self.cfg.temperature)
        else:  # the label-oracle control (plugins: [mask_false_negatives])
            loss = oracle_ntxent_loss(g1, g2, gather_no_grad(labels), self.cfg.temperature, self.fn_oracle)
        out = {"loss": loss, "_keys": z2}  # "_keys": view 2's embeddings, for plug-ins (BSIM)
        if info.diagnose:
            out["_diag"] = batch_diagnostics(z1, z2, info, self.cfg.temperature)
        return out

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder + head (for plug-ins that add views, e.g. BSIM's mixtures)."""
        return self.online(x)
