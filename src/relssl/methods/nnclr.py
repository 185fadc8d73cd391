"""NNCLR (Dwibedi et al. 2021): the positive of a view is its nearest neighbour in a support set.

Spec: docs/methods/nnclr.md (trusted code: solo-learn
``solo/methods/nnclr.py`` + ``solo/losses/nnclr.py``; lightly's NN memory bank and heads).

Networks: backbone -> projector (``nnclr_projector``: 3 Linear layers, BN after each, ReLU after
all but the last) -> predictor (``nnclr_predictor``: Linear -> BN -> ReLU -> Linear). No EMA.
Each view goes through the network in its own forward (its own BN statistics), as solo-learn does.

Step: z = projector(backbone(x)), p = predictor(z) for both views; the support set is a FIFO
``FeatureQueue`` of L2-normalised projections z. NN(z) = the queue row of highest cosine with z,
searched without gradient in the queue *as it was before this step*; then

    loss = nnclr_loss(z1, z2, p1, p2, support, temperature, symmetrize)
         = 0.5 * [ CE(NN(z1) . n(p2)^T / tau) + CE(NN(z2) . n(p1)^T / tau) ]

and, after the loss, view 1's z is written to the queue (solo-learn stores view 1 only) with
``info.index`` / ``info.labels`` / ``info.step`` beside each row. The search is done once, here
(``FeatureQueue.nearest``, in float32), and the loss is handed the found neighbours both as the
"projections" and as the support: the loss's own search then returns each neighbour itself, so the
value equals ``nnclr_loss(z1, z2, p1, p2, queue.features)`` (tested) while the neighbour indices
stay available for ``exclude_self`` and the monitoring metrics.

Options (``Config``):

* ``temperature`` 0.2: the solo-learn CIFAR value, our choice for small data (the paper used 0.1
  on ImageNet [paper?]; the pNNCLR notebook's NNCLR baseline also 0.1).
* ``queue_size`` 16384: small-data default (solo-learn 65536 for CIFAR-10's 50k images, the paper
  98304 on ImageNet [paper?]). A queue larger than the dataset fills with stale copies of every
  image; 16384 keeps it below CIFAR's 50k and Fashion-MNIST's 60k.
* ``proj_hidden`` 2048, ``proj_dim`` 256, ``pred_hidden`` 4096: solo-learn / lightly (paper) values.
* ``symmetrize`` False: solo-learn's loss; True adds the transposed (columns-as-anchors) term of
  the paper (the value then about doubles).
* ``exclude_self`` False (textbook): **our addition**. True passes ``info.index`` to the search so
  that a query never takes its own stale copy (the row written for the same image in an earlier
  epoch) as its neighbour; solo-learn and lightly cannot tell it apart.

Views: NNCLR's augmentations are BYOL's asymmetric pair (the paper follows BYOL [paper?];
solo-learn's CIFAR recipe is asymmetric too), so ``default_views = ("byol_a", "byol_b")``.

Metrics (cheap, no host sync): ``nn_purity`` = among the 2B neighbours that are written rows
(label >= 0; initial random rows are ignored), the fraction whose stored label equals the query's
label (NaN while no neighbour is a written row; absent when the dataset has no labels);
``nn_self`` = the fraction of neighbours that are a copy of the query's own image (absent without
``info.index``). Labels are read for monitoring only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.losses import nnclr_loss, oracle_nnclr_loss
from relssl.methods.base import FN_ORACLE, TEMPERATURE, Method, StepInfo, oracle_labels, register_method
from relssl.methods.common import check_positive
from relssl.methods.diagnose import batch_diagnostics
from relssl.metrics.falseneg import neighbour_metrics
from relssl.nn import FeatureQueue, gather_no_grad, gather_with_grad, nnclr_predictor, nnclr_projector


@register_method
class NNCLR(Method):
    name = "nnclr"
    capabilities = frozenset({TEMPERATURE, FN_ORACLE})
    default_views = ("byol_a", "byol_b")

    @dataclass
    class Config:
        temperature: float = 0.2
        queue_size: int = 16384
        proj_hidden: int = 2048
        proj_dim: int = 256
        pred_hidden: int = 4096
        symmetrize: bool = False
        exclude_self: bool = False

        def validate(self) -> None:
            for key in ("temperature", "queue_size", "proj_hidden", "proj_dim", "pred_hidden"):
                check_positive(key, getattr(self, key))

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "NNCLR.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.online = nn.Sequential(OrderedDict(
            backbone=backbone, projector=nnclr_projector(feat_dim, cfg.proj_hidden, cfg.proj_dim)))
        self.predictor = nnclr_predictor(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    @torch.no_grad()
    def neighbours(self, z: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (B, D), queue indices (B,)) of the nearest support row of each z (float32, no gradient)."""
        exclude = index if self.cfg.exclude_self else None
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.queue.nearest(z.float(), exclude_index=exclude)

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        z1, z2 = self.online(x1), self.online(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        nn1, idx1 = self.neighbours(z1, info.index)  # the queue before this step's write
        nn2, idx2 = self.neighbours(z2, info.index)
        # The loss searches its support for each "projection": given the neighbours themselves and
        # the support [nn1; nn2], it finds each neighbour again, i.e. the value of
        # nnclr_loss(z1, z2, p1, p2, queue) with our (optionally self-excluding) neighbours.
        # The loss contrasts over the global batch (rows in rank order; identity with one process).
        g_nn1, g_nn2 = gather_no_grad(torch.stack([nn1, nn2], dim=1)).unbind(1)
        g_p1, g_p2 = gather_with_grad(torch.stack([p1, p2], dim=1)).unbind(1)
        labels = oracle_labels(self, info)
        if labels is None:
            loss = nnclr_loss(g_nn1, g_nn2, g_p1, g_p2, torch.cat([g_nn1, g_nn2]), temperature=self.cfg.temperature,
                              symmetrize=self.cfg.symmetrize)
        else:  # the label-oracle control (plugins: [mask_false_negatives])
            loss = oracle_nnclr_loss(g_nn1, g_nn2, g_p1, g_p2, gather_no_grad(labels), self.cfg.temperature,
                                     self.cfg.symmetrize, self.fn_oracle)
        idx = torch.stack([idx1, idx2])  # (2, B); metadata read before the write below
        metrics = neighbour_metrics(self.queue.labels[idx], self.queue.index[idx], info.labels, info.index)
        self.queue.enqueue(z1, index=info.index, labels=info.labels, step=info.step)
        out = {"loss": loss, **metrics}
        if info.diagnose:  # the negatives of NN(z1) are the other predictions of view 2
            out["_diag"] = batch_diagnostics(nn1, p2, info, self.cfg.temperature, same_view=False)
        return out
