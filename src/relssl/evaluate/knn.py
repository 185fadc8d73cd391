"""kNN evaluation on frozen backbone features (the InstDisc / MoCo CIFAR protocol).

Features: backbone output in eval mode, L2-normalised. Weighted kNN: for each query take the k
most cosine-similar bank entries, weight each by exp(sim / t), sum the weights per class, predict
the argmax (k = 200, t = 0.1 by default). ``weighting="uniform"`` is the majority vote of the
MSF protocol (1-NN, 20-NN). Queries are processed in chunks so memory stays bounded (the bank
is never multiplied against all queries at once).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relssl.augment import eval_batch


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, size: int, mean: Sequence[float],
                     std: Sequence[float], batch_size: int = 1024, device: torch.device | str | None = None,
                     channels_last: bool = False, autocast: torch.dtype | None = None,
                     normalize: bool = True) -> torch.Tensor:
    """Backbone features (N, D) of uint8 ``images`` (N, C, H, W), in eval mode, float32, on ``device``."""
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = eval_batch(images[start:start + batch_size].to(device, non_blocking=True), size, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
            with ctx:
                f = backbone(x)
            f = f.float().flatten(1)
            out.append(F.normalize(f, dim=1) if normalize else f)
    finally:
        backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
               k: int = 200, t: float = 0.1, weighting: str = "exp", chunk: int = 1024) -> torch.Tensor:
    """Class scores (Nq, C) of each query from its k nearest bank entries (cosine; inputs normalised)."""
    if weighting not in ("exp", "uniform"):
        raise ValueError(f"weighting must be 'exp' or 'uniform', got {weighting!r}")
    if t <= 0:
        raise ValueError(f"kNN temperature t must be > 0, got {t}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(bank))
    bank_labels = bank_labels.to(bank.device)
    scores = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].to(bank.device)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        w = (sims / t).exp() if weighting == "exp" else torch.ones_like(sims)
        s = torch.zeros(len(q), num_classes, device=bank.device, dtype=w.dtype)
        s.scatter_add_(1, bank_labels[idx], w)
        scores.append(s)
    return torch.cat(scores)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent for each k (k capped at the number of classes)."""
    labels = labels.to(scores.device)
    out = {}
    order = scores.argsort(dim=1, descending=True)
    for k in ks:
        kk = min(k, scores.shape[1])
        out[f"top{k}"] = 100.0 * (order[:, :kk] == labels[:, None]).any(dim=1).float().mean().item()
    return out


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, k: int = 200, t: float = 0.1,
                 weighting: str = "exp") -> dict[str, float]:
    """Top-1 / top-5 kNN accuracy (percent) of ``queries`` against ``bank``."""
    return topk_accuracy(knn_scores(bank, bank_labels, queries, num_classes, k, t, weighting), query_labels)


def pixel_features(images: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Raw-pixel baseline features: flattened pixels (mean-centred over the set), L2-normalised."""
    x = images.flatten(1).float() / 255.0
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    return F.normalize(x, dim=1)
