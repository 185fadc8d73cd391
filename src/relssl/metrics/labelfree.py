"""Label-free measures of representation quality: RankMe, uniformity and alignment.

They need no labels, so they monitor pretraining on unlabelled images (``trainer.monitor``,
``relssl.engine.callbacks``), and sit beside kNN when labels exist.

* :func:`rankme` (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream
  performance of pretrained self-supervised representations by their rank", ICML 2023, Eq. 1):
  the effective rank of the (N, D) feature matrix Z. With sigma_1..sigma_K its singular values,
  K = min(N, D),

      p_k = sigma_k / sum_j sigma_j + eps,      RankMe(Z) = exp(-sum_k p_k log p_k),

  eps = 1e-7. It lies in [1, K] (up to eps): about 1 for features collapsed onto one direction,
  K when every direction carries the same spread. Invariant to scaling Z. Z is used as given
  (not centred, not normalised), as in the paper. The paper estimates it from 25,600 samples;
  with fewer samples than about 4-8x D the estimate of a well-spread representation falls short
  of its value on the whole distribution (it measures how well N samples whiten, too).
* :func:`uniformity` and :func:`alignment` (Wang & Isola, "Understanding contrastive
  representation learning through alignment and uniformity on the hypersphere", ICML 2020), on
  L2-normalised features: uniformity = log of the mean over pairs i != j of exp(-t ||z_i - z_j||^2)
  (t = 2; 0 for features collapsed to one point; never below -2t N / (N - 1), about -4, which
  points spread evenly on a high-dimensional sphere approach; lower = more uniform); alignment = mean ||z1_i - z2_i||^alpha
  between the features of two augmented views of the same images (alpha = 2; in [0, 4], lower =
  more invariant to the augmentations).

:func:`labelfree_metrics` computes all three for a backbone and a set of uint8 images: RankMe
and uniformity from the eval-mode features of the images themselves (resized and normalised as
for kNN), alignment from two augmented views of (at most 1024 of) them, drawn with a fixed seed
from the given recipes (the run's own), so two calls on the same backbone give the same numbers
and epochs compare.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relssl.augment import make_views
from relssl.metrics.knn import extract_features


def _check_2d(name: str, x: torch.Tensor, min_rows: int = 1) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (N, D) tensor with N >= {min_rows} and D >= 1, got {shape}")


def _wide_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (CPU, CUDA), else float32 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


@torch.no_grad()
def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe of (N, D) ``features``: exp of the entropy of their L1-normalised singular values.

    ``p_k = s_k / sum(s) + eps``, ``RankMe = exp(-sum_k p_k log p_k)`` over the min(N, D)
    singular values ``s`` (Garrido et al. 2023, Eq. 1), computed in float64 on the features'
    device (float32 where the device has no float64). Returns NaN for non-finite features and
    0.0 for an all-zero matrix (no direction carries anything; the formula is undefined there).
    """
    _check_2d("features", features)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x = features.detach().to(_wide_dtype(features.device))
    if not bool(torch.isfinite(x).all()):
        return math.nan
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if not total > 0:
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0, chunk: int = 1024) -> float:
    """Uniformity of Wang & Isola: ``log mean_{i != j} exp(-t ||z_i - z_j||^2)`` of the L2-normalised rows.

    Over all N (N - 1) ordered pairs (the same mean as over the unordered ones), a chunk of rows
    at a time (memory ``chunk`` x N), summed as a log-sum-exp. Needs N >= 2.
    """
    _check_2d("z", z, min_rows=2)
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    z = F.normalize(z.detach().float(), dim=1)
    n = z.shape[0]
    sq = (z * z).sum(dim=1)  # 1, or 0 for an all-zero row
    parts = []
    for start in range(0, n, chunk):
        rows = z[start:start + chunk]
        d2 = (sq[start:start + chunk, None] + sq[None, :] - 2.0 * rows @ z.T).clamp_min_(0.0)
        logits = -t * d2
        i = torch.arange(len(rows), device=z.device)
        logits[i, start + i] = -math.inf  # no pair of a point with itself
        parts.append(torch.logsumexp(logits.flatten(), dim=0).to(_wide_dtype(z.device)))
    return float(torch.logsumexp(torch.stack(parts), dim=0) - math.log(n * (n - 1)))


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """Alignment of Wang & Isola: ``mean_i ||z1_i - z2_i||^alpha`` of the L2-normalised rows.

    Row i of ``z1`` and of ``z2`` are features of two views of the same image.
    """
    _check_2d("z1", z1)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    a = F.normalize(z1.detach().to(_wide_dtype(z1.device)), dim=1)
    b = F.normalize(z2.detach().to(_wide_dtype(z2.device)), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


@torch.no_grad()
def view_features(backbone: nn.Module, images: torch.Tensor, recipes: Sequence, mean: Sequence[float],
                  std: Sequence[float], generator: torch.Generator, batch_size: int = 1024,
                  device: torch.device | str | None = None, channels_last: bool = False) -> list[torch.Tensor]:
    """Backbone features (eval mode, float32, not normalised) of augmented views of uint8 ``images``.

    One (N, D) tensor per recipe; the views of each batch come from ``make_views`` with
    ``generator`` (on ``device``), so a freshly seeded generator and the same ``batch_size``
    give the same views every call.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out: list[list[torch.Tensor]] = [[] for _ in recipes]
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device, non_blocking=True)
            for i, v in enumerate(make_views(batch, list(recipes), mean, std, generator)):
                if channels_last:
                    v = v.contiguous(memory_format=torch.channels_last)
                out[i].append(backbone(v).float().flatten(1))
    finally:
        backbone.train(was_training)
    return [torch.cat(parts) for parts in out]


def labelfree_metrics(backbone: nn.Module, images: torch.Tensor, recipes: Sequence, *, size: int,
                      mean: Sequence[float], std: Sequence[float], device: torch.device | str | None = None,
                      seed: int = 0, batch_size: int = 1024, channels_last: bool = False, t: float = 2.0,
                      alpha: float = 2.0, eps: float = 1e-7, align_n: int | None = 1024) -> dict[str, float]:
    """RankMe, uniformity and alignment of ``backbone`` on uint8 ``images`` (N, C, H, W).

    ``rankme`` and ``uniformity``: of the eval-mode features of all N images (resized to
    ``size`` and normalised, as for kNN). ``alignment``: between the features of the views of
    the first two ``recipes`` (one recipe: two views of it) of ``align_n`` of the images (a
    seeded random choice; None: all), drawn from a generator seeded with ``seed``; omitted when
    ``recipes`` is empty. Alignment is a mean over images, settled well by ~1000 of them, while
    its views cost two forward passes each; RankMe needs N well above the feature dimension.
    Features in float32 (no autocast: reduced precision raises the small singular values RankMe sums).
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    feats = extract_features(backbone, images, size, mean, std, batch_size=batch_size, device=device,
                             channels_last=channels_last, autocast=None, normalize=False)
    out = {"rankme": rankme(feats, eps), "uniformity": uniformity(feats, t)}
    if recipes:
        pair = list(recipes[:2]) if len(recipes) >= 2 else [recipes[0], recipes[0]]
        if align_n is not None and align_n < len(images):
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:align_n]
            images = images[pick.sort().values]
        gen = torch.Generator(device=device).manual_seed(seed)
        z1, z2 = view_features(backbone, images, pair, mean, std, gen, batch_size=batch_size, device=device,
                               channels_last=channels_last)
        out["alignment"] = alignment(z1, z2, alpha)
    return out
