"""pNNCLR (Biswas, Buckchash, Prasad 2023/2024): NNCLR with *pseudo* nearest neighbours and a
smoothly updated (EMA) target network.

Spec: docs/methods/pnnclr.md (official code: mb16biswas/pnnclr
``Pretraining_SSL.ipynb``, class ``PNNCLR``; TensorFlow/Keras).

Networks (official shapes, widths configurable; the official values are the defaults):

* online encoder f = backbone (GAP features, the representation evaluated downstream) + head
  ``Linear(feat, enc_hidden, bias=False) -> ReLU -> BN -> Linear(enc_hidden, enc_dim)``
  (Keras ``Dense(2048, relu, use_bias=False) -> BatchNormalization -> Dense(2048)``);
* projector g = ``Linear -> ReLU -> Linear`` (no BN); predictor q = ``Linear -> ReLU -> Linear``
  (no BN); the queue and the loss live in g's / q's output space (``proj_dim``);
* target = EMA copy of f and g (no target predictor), updated after every optimizer step with a
  **fixed** rate ``momentum`` = 0.99 (the "smooth weight update") over every weight *and* the BN
  running statistics (``ema_update(copy_buffers=True)``, "including BN moving mean and variance").

Step (the official ``train_step``; each view in its own forward, as the notebook calls the
networks once per view): p^v = q(g(f(x^v))), zt^v = g_T(f_T(x^v)) without gradient, then

    half 1:  C1 = pnnclr_loss(p1, zt2, Q);   push n(p1) to Q          (Q -> Q')
    half 2:  C2 = pnnclr_loss(p2, zt1, Q');  push n(p2) to Q'
    loss = 0.5 * C1 + 0.5 * C2

so half 2 searches a support set that already holds this step's view-1 predictions (which can be
the other view of the same image), exactly as the official code. The support set Q is a FIFO
``FeatureQueue`` of L2-normalised **online predictions** (NNCLR stores projections), each row
with ``info.index`` / ``info.labels`` / ``info.step``. Each ``pnnclr_loss`` call builds the four
B x B blocks pNN(A)Bn^T, Bn pNN(A)^T, pNN(Bn)A^T, A pNN(Bn)^T with the pseudo neighbour
``pNN(u) = (1 - t) u + t NN(u)``, t = 0.95 (the notebook's ``linspace(u, NN, 21)[19]``), not
re-normalised; the gradient reaches u only through ``(1 - t) u``.

Options (``Config``; the extensions are off by default):

* ``temperature`` 0.1, ``queue_size`` 10000, ``t`` 0.95, ``momentum`` 0.99: official values.
* ``enc_hidden`` / ``enc_dim`` / ``proj_hidden`` / ``proj_dim`` / ``pred_hidden``: all 2048 in the
  official code (a ResNet-50 backbone). Our small-data recipes scale them to ResNet-18: 512 for
  the hidden widths and the encoder output, 128 for the projection/queue space (documented there).
* ``reduction`` "mean" (default) or "sum". TF differentiates the *sum* of the 4B per-row losses of
  each call (a non-scalar loss), so the official gradient is 4B times the mean's: to match the
  official lr 1e-3 (SGD, B = 64, no weight decay) with ``mean``, use lr 4B * 1e-3 = 0.256; or
  keep ``sum`` and divide a mean-tuned lr by 4B.
* ``noise`` False, ``noise_std`` 0.1: add an independent N(0, noise_std^2) draw to every pseudo
  neighbour (one per block, as the official ``noise=True``; whether Keras' GaussianNoise was even
  active there is uncertain, docs/methods/pnnclr.md).
* ``topk`` 1: >1 draws the neighbour uniformly among the top-k (the paper's "stochastic" wording;
  not in the code, unverified). ``t_min`` None: a number draws a per-sample t ~ U[t_min, t] in
  every pseudo-neighbour call (unverified extension).
  Every draw comes from ``info.generator`` (the step's seeded generator), so runs are reproducible.

Not followed: the official backbone is Keras ResNet-50 **initialised from supervised ImageNet
weights**; we start from random initialisation (``backbone.pretrained`` is null in every recipe)
so that all methods compare fairly, which makes our numbers not comparable to the paper's. The
official views (flip, zoom, rotation, contrast, height, RandomResizedCrop(0.2-1), brightness
0.5-1.5 at 96 px) have no recipe here (no rotation/zoom); we use NNCLR's views (``byol_a``,
``byol_b``), since the notebook trains pNNCLR and its NNCLR baseline with the same augmenter.
In the notebook the head's BatchNormalization is called without ``training=True`` inside a custom
``train_step`` (only the ResNet inside is called with ``training=True``), so Keras may have run it
in inference mode, on moving statistics (unverified); we run it in training mode, as every method
here does. The notebook's online linear probe is not reproduced (the engine's kNN monitor watches
progress instead).

Metrics (cheap, no host sync): ``nn_purity`` = label agreement of the hard nearest neighbours that
the pseudo neighbours are built from (queries n(p1), n(zt2) in Q and n(p2), n(zt1) in Q'; written
rows only; with ``topk`` > 1 still the top-1), and ``nn_self`` (neighbour is a copy of the query's
own image, e.g. half 2 finding the other view's fresh prediction); see ``relssl.metrics.falseneg.neighbour_metrics``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from relssl.errors import ConfigError
from relssl.losses import oracle_pnnclr_loss, pnnclr_loss
from relssl.methods.base import FN_ORACLE, TEMPERATURE, Method, StepInfo, oracle_labels, register_method
from relssl.methods.common import check_choice, check_momentum, check_positive
from relssl.methods.diagnose import batch_diagnostics
from relssl.metrics.falseneg import neighbour_metrics
from relssl.nn import FeatureQueue, ema_update, gather_no_grad, gather_with_grad, make_teacher, mlp


def pnnclr_encoder_head(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """The official encoder head: ``Linear(bias=False) -> ReLU -> BN -> Linear`` (ReLU before BN)."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.ReLU(inplace=True),
                         nn.BatchNorm1d(hidden), nn.Linear(hidden, out))


@register_method
class PNNCLR(Method):
    name = "pnnclr"
    capabilities = frozenset({TEMPERATURE, FN_ORACLE})
    default_views = ("byol_a", "byol_b")

    @dataclass
    class Config:
        temperature: float = 0.1
        queue_size: int = 10000
        t: float = 0.95
        momentum: float = 0.99
        enc_hidden: int = 2048
        enc_dim: int = 2048
        proj_hidden: int = 2048
        proj_dim: int = 2048
        pred_hidden: int = 2048
        reduction: str = "mean"
        noise: bool = False
        noise_std: float = 0.1
        topk: int = 1
        t_min: float | None = None

        def validate(self) -> None:
            for key in ("temperature", "queue_size", "enc_hidden", "enc_dim", "proj_hidden", "proj_dim",
                        "pred_hidden", "topk"):
                check_positive(key, getattr(self, key))
            check_momentum("t", self.t)
            check_momentum("momentum", self.momentum)
            check_choice("reduction", self.reduction, ("mean", "sum"))
            if self.noise_std < 0:
                raise ConfigError(f"method.noise_std must be >= 0, got {self.noise_std}")
            if self.topk > self.queue_size:
                raise ConfigError(f"method.topk must be <= method.queue_size ({self.queue_size}), got {self.topk}")
            if self.t_min is not None and not 0.0 <= self.t_min <= self.t:
                raise ConfigError(f"method.t_min must be null or in [0, t={self.t}], got {self.t_min}")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: "PNNCLR.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.online = nn.Sequential(OrderedDict(
            backbone=backbone,
            head=pnnclr_encoder_head(feat_dim, cfg.enc_hidden, cfg.enc_dim),
            projector=mlp([cfg.enc_dim, cfg.proj_hidden, cfg.proj_dim])))
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim])
        self.teacher = make_teacher(self.online)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def _half(self, a: torch.Tensor, b: torch.Tensor, info: StepInfo):
        """One call C(a, b; Q) on the current queue Q, then push n(a).

        Returns C and the stored (labels, sample indices), each (2, B), of the hard nearest
        neighbours of n(a) and n(b) in Q (for the monitoring metrics only)."""
        cfg = self.cfg
        with torch.no_grad(), torch.autocast(device_type=a.device.type, enabled=False):
            _, idx = self.queue.nearest(torch.cat([a, b]).float())
            idx = idx.view(2, -1)
            stored = (self.queue.labels[idx], self.queue.index[idx])  # before the write below
        # the four blocks span the global batch (rows in rank order; identity with one process)
        kw = dict(temperature=cfg.temperature, t=cfg.t, reduction=cfg.reduction, topk=cfg.topk, t_min=cfg.t_min,
                  noise_std=cfg.noise_std if cfg.noise else None, generator=info.generator)
        labels = oracle_labels(self, info)
        if labels is None:
            loss = pnnclr_loss(gather_with_grad(a), gather_no_grad(b), self.queue.features, **kw)
        else:  # the label-oracle control (plugins: [mask_false_negatives])
            loss = oracle_pnnclr_loss(gather_with_grad(a), gather_no_grad(b), self.queue.features,
                                      gather_no_grad(labels), mode=self.fn_oracle, **kw)
        self.queue.enqueue(a, index=info.index, labels=info.labels, step=info.step)
        return loss, stored

    def training_step(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        x1, x2 = views
        p1, p2 = self.predictor(self.online(x1)), self.predictor(self.online(x2))
        with torch.no_grad():
            zt1, zt2 = self.teacher(x1), self.teacher(x2)
        c1, (lab1, ind1) = self._half(p1, zt2, info)  # searches Q, then Q <- Q + n(p1)
        c2, (lab2, ind2) = self._half(p2, zt1, info)  # searches Q' (holds n(p1)), then + n(p2)
        loss = 0.5 * c1 + 0.5 * c2
        metrics = neighbour_metrics(torch.cat([lab1, lab2]), torch.cat([ind1, ind2]), info.labels, info.index)
        out = {"loss": loss, **metrics}
        if info.diagnose:  # the negatives of view 1's prediction: the other targets of view 2
            out["_diag"] = batch_diagnostics(p1, zt2, info, self.cfg.temperature, same_view=False)
        return out

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> None:
        ema_update(self.teacher, self.online, self.cfg.momentum, copy_buffers=True)
