"""kNN accuracy of features, feature extraction and the raw-pixel baseline (the InstDisc / MoCo CIFAR protocol).

Features: backbone output in eval mode, L2-normalised. Weighted kNN: for each query take the k
most cosine-similar bank entries, weight each by exp(sim / t), sum the weights per class, predict
the argmax (k = 200, t = 0.1 by default). ``weighting="uniform"`` counts the votes;
``weighting="vote"`` is the majority vote of the MSF protocol (1-NN, 20-NN; ``eval_knn.py`` of
the MSF repo), with ties broken by the neighbours' summed similarity (MSF breaks them at random).
Queries are processed in chunks so memory stays bounded (the bank is never multiplied against
all queries at once).

Used by the training engine's kNN monitor and by :func:`relssl.evaluate.knn.evaluate_knn`, which
runs the protocols on a checkpoint beside the random-init and raw-pixel baselines.
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
    if weighting not in ("exp", "uniform", "vote"):
        raise ValueError(f"weighting must be 'exp', 'uniform' or 'vote', got {weighting!r}")
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
        if weighting == "exp":
            w = (sims / t).exp()
        elif weighting == "vote":
            # one vote each, plus a tie-break below one vote in total: (1 + sim) / 4k per neighbour
            w = 1.0 + (1.0 + sims) / (4.0 * k)
        else:
            w = torch.ones_like(sims)
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


def pixel_features_pair(bank_images: torch.Tensor, test_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-pixel baseline of a bank and a test set: both centred with the bank's mean, L2-normalised."""
    xb = bank_images.flatten(1).float() / 255.0
    xt = test_images.flatten(1).float() / 255.0
    mu = xb.mean(dim=0, keepdim=True)
    return F.normalize(xb - mu, dim=1), F.normalize(xt - mu, dim=1)


#: kNN protocols by name: (weighting, k or None for the ``k`` argument)
KNN_PROTOCOLS = {"weighted": ("exp", None), "nn1": ("vote", 1), "nn20": ("vote", 20)}
PROTOCOL_SETS = {"weighted": ("weighted",), "msf": ("nn1", "nn20"), "all": ("weighted", "nn1", "nn20")}


def knn_protocols(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                  num_classes: int, protocols: Sequence[str] = ("weighted", "nn1", "nn20"), k: int = 200,
                  t: float = 0.1) -> dict[str, dict[str, float]]:
    """Top-1 / top-5 (percent) of each named protocol: ``weighted`` (exp(sim / t) over the k
    nearest), ``nn1`` and ``nn20`` (majority vote among the 1 / 20 nearest; MSF). A vote among
    fewer than 5 neighbours ranks no 5 classes: its ``top5`` is None."""
    out = {}
    for name in protocols:
        if name not in KNN_PROTOCOLS:
            raise ValueError(f"unknown kNN protocol {name!r}; allowed: {', '.join(KNN_PROTOCOLS)}")
        weighting, kk = KNN_PROTOCOLS[name]
        acc = knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=kk or k, t=t,
                           weighting=weighting)
        if weighting == "vote" and (kk or k) < 5:
            acc["top5"] = None  # fewer than 5 votes: the rest of the ranking is arbitrary
        out[name] = acc
    return out
