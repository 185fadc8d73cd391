"""WCL: Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021, arXiv 2110.04770).

Spec: shared/methods/wcl-bsim-pnnclr-baselines.md section 1 (official ``mingkai-zheng/WCL``,
``network/wcl.py`` and ``wcl.py``); its two terms are NT-Xent (section 4.1) and a within-view
SupCon L_out (section 4.4) on weak labels.

Step: ``h = f(cat[x1, x2])`` (one backbone forward, so both views share BN statistics),
``a_v = g(h_v)`` (instance head), ``b_v = phi(h_v)`` (graph head), then
``loss = relssl.losses.wcl_loss(a1, a2, b1, b2, temperature, graph_weight, detach_candidates)``:
NT-Xent on the instance head + ``graph_weight`` x SupCon on the graph head, where the weak labels
of each view are the connected components of the 1-NN graph of that view's graph-head embeddings
over the batch, swapped across views (view 2's components supervise view 1 and vice versa).

Choices (code = official repo, paper = the ICCV paper as the spec recalls it):

* Heads: two ``relssl.nn.wcl_head`` (Linear-BN-ReLU-Linear-BN-ReLU-Linear, bias on, no final BN).
  Defaults ``proj_hidden=4096``, ``proj_dim=256`` are the code's; the paper's 2048/128 are what
  the small-data recipes use. ``temperature=0.1`` for both terms, ``graph_weight=1`` (code).
* ``detach_candidates=True`` (code): the graph term differentiates only its anchor rows (the
  official candidates come from a ``no_grad`` all-gather); ``False`` is the textbook gradient.
* Global batch: the head outputs of every process are gathered *with* gradient
  (``relssl.nn.gather_with_grad``, identity for one process, where the official code crashes)
  and every process evaluates ``wcl_loss`` on the whole global batch. So the graph is built over
  the global batch (as the code does on rank 0), the loss value equals the one-process value on
  that batch, and with DDP's gradient averaging the gradient is that of one process holding the
  global batch. This reproduces the official graph-term gradient exactly; for the instance term
  it keeps the gradient through other processes' columns that the official ``no_grad`` gather
  drops (identical with one process). Differences that remain: the engine uses per-process
  (Split)BN on both views together, the code SyncBN over the global batch with one forward per
  view.
* Augmentation schedule (code): ``views_for_epoch`` returns MoCo v2 aug+ (``strong``) for the
  first ``weak_aug_epochs`` epochs (10 in the code, where it equals the 10 LR warm-up epochs),
  then SimCLR aug (``simclr``); ``weak_aug_epochs=0`` uses SimCLR aug throughout. The engine
  follows it only when the config leaves ``views`` unset.
* ``multicrop`` (paper only, UNVERIFIED, not in the released code; default 0 = off): the
  KNN-selected low-resolution extra crops. NOT IMPLEMENTED: it needs engine support for a
  variable number of views of different sizes, and its selection rule is unverified; any value
  but 0 raises ``ConfigError``.
* Monitoring (no gradient, no host sync beyond the graph search the loss already does), over the
  global batch and averaged over the two views: ``graph_size`` = mean connected-component size
  (N / #components), ``graph_purity`` (only when labels are known) = fraction of the ordered
  positive pairs ``i != j`` of the weak-label mask whose true classes agree;
  ``instance_loss`` = the NT-Xent term and ``graph_loss`` = the unweighted graph term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from relssl.errors import ConfigError
from relssl.losses import connected_components, ntxent_loss, wcl_loss
from relssl.methods.common import StepInfo, check_positive
from relssl.nn import gather_no_grad, gather_with_grad, wcl_head

WEAK_VIEWS = ("strong", "strong")  # the code's ``moco_aug`` for the first epochs


@torch.no_grad()
def graph_stats(embeddings: list[torch.Tensor],
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``graph_size`` and (with ``labels``) ``graph_purity`` of the 1-NN graphs of ``embeddings``.

    Each ``(N, D)`` tensor (one per view) is l2-normalised, every row linked to its most
    cosine-similar other row, and the connected components taken as weak labels (as in
    ``wcl_loss``). Returns the means over the views of N / #components and of the fraction of
    pairs ``(i, j), i != j`` in the same component whose ``labels`` agree.
    """
    sizes, purities = [], []
    for g in embeddings:
        b = F.normalize(g.detach().float(), dim=1)
        eye = torch.eye(b.shape[0], dtype=torch.bool, device=b.device)
        comp = connected_components((b @ b.T).masked_fill(eye, float("-inf")).argmax(dim=1))
        sizes.append(b.shape[0] / (comp.max() + 1).float())
        if labels is not None:
            pos = (comp[:, None] == comp[None, :]) & ~eye
            agree = pos & (labels[:, None] == labels[None, :])
            purities.append(agree.sum() / pos.sum().float())  # every node has a positive
    out = {"graph_size": torch.stack(sizes).mean()}
    if labels is not None:
        out["graph_purity"] = torch.stack(purities).mean()
    return out


class WCL(nn.Module):
    name = "wcl"
    default_views = ("simclr", "simclr")

    @dataclass
    class Config:
        temperature: float = 0.1
        graph_weight: float = 1.0
        detach_candidates: bool = True
        proj_hidden: int = 4096
        proj_dim: int = 256
        weak_aug_epochs: int = 10
        multicrop: int = 0  # UNVERIFIED paper option, not implemented: must stay 0
        graph_metrics: bool = True

        def validate(self) -> None:
            check_positive("temperature", self.temperature)
            check_positive("proj_hidden", self.proj_hidden)
            check_positive("proj_dim", self.proj_dim)
            if self.graph_weight < 0:
                raise ConfigError(f"method.graph_weight must be >= 0, got {self.graph_weight}")
            if self.weak_aug_epochs < 0:
                raise ConfigError(f"method.weak_aug_epochs must be >= 0 (0 = SimCLR aug from the start), "
                                  f"got {self.weak_aug_epochs}")
            if self.multicrop != 0:
                raise ConfigError(
                    f"method.multicrop={self.multicrop} is not implemented: WCL's KNN-based multi-crop is "
                    "paper-only (UNVERIFIED, not in the released code) and needs engine support for extra "
                    "views of another size; set method.multicrop=0")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "WCL.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = backbone
        self.instance_head = wcl_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)  # g
        self.graph_head = wcl_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)  # phi

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    def views_for_epoch(self, epoch: int) -> list[str]:
        """MoCo v2 aug+ for the first ``weak_aug_epochs`` epochs, then SimCLR aug (official code)."""
        return list(WEAK_VIEWS if epoch < self.cfg.weak_aug_epochs else self.default_views)

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        h = self.encoder(torch.cat([x1, x2]))  # one forward: both views share BN statistics
        a1, a2 = self.instance_head(h).chunk(2)
        g1, g2 = self.graph_head(h).chunk(2)
        # the global batch, rows in rank order (identity with one process); one collective
        a1, a2, g1, g2 = gather_with_grad(torch.stack([a1, a2, g1, g2], dim=1)).unbind(1)
        cfg = self.cfg
        loss = wcl_loss(a1, a2, g1, g2, temperature=cfg.temperature, graph_weight=cfg.graph_weight,
                        detach_candidates=cfg.detach_candidates)
        out = {"loss": loss}
        if cfg.graph_metrics:
            with torch.no_grad():
                instance = ntxent_loss(a1.detach(), a2.detach(), temperature=cfg.temperature)
                out["instance_loss"] = instance
                if cfg.graph_weight > 0:
                    out["graph_loss"] = (loss.detach() - instance) / cfg.graph_weight
            labels = None if info.labels is None else gather_no_grad(info.labels)
            out.update(graph_stats([g1, g2], labels))
        return out

    def after_optimizer_step(self, info: StepInfo) -> None:
        pass
