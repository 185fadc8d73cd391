"""Geometric ops on a batch: random resized crop + horizontal flip in one resampling.

Every random number comes from uniforms the caller draws (one ``torch.rand`` per
view in :mod:`relssl.augment.pipeline`), so the ops themselves are deterministic,
have static shapes and never synchronise a CUDA device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sample_crop_boxes", "crop_boxes_from_uniform", "crop_theta", "crop_resize_flip", "resize", "hflip"]

#: How many (area, ratio) candidates torchvision's RandomResizedCrop tries before its fallback.
CROP_TRIES = 10
#: Uniforms consumed per sample by :func:`crop_boxes_from_uniform`: 2 per try + 2 offsets.
CROP_UNIFORMS = 2 * CROP_TRIES + 2


def crop_boxes_from_uniform(
    u: Tensor, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> Tensor:
    """RandomResizedCrop boxes from ``u`` of shape (B, 22), uniform in [0, 1).

    Matches ``torchvision.transforms.v2.RandomResizedCrop.get_params`` in
    distribution: up to 10 candidates (area ~ U[scale] * H * W, log-ratio ~
    U[log ratio]), width/height rounded to integers, the first candidate that
    fits wins and its top-left corner is uniform over the integer positions;
    if none fits, the central crop with the aspect ratio clamped to ``ratio``.
    Returns int64 (B, 4): top, left, height, width (pixels).
    """
    area = float(height * width)
    tries = u[:, : 2 * CROP_TRIES].view(-1, CROP_TRIES, 2)
    target = area * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first True (0 if none)
    any_fit = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # fallback: whole image, aspect ratio clamped into the allowed range (python scalars)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(any_fit, w, float(fw))
    h = torch.where(any_fit, h, float(fh))
    top = torch.where(any_fit, torch.floor(u[:, -2] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(any_fit, torch.floor(u[:, -1] * (width - w + 1)), torch.floor((width - w) / 2))
    top = torch.minimum(top, height - h)  # u < 1, but guard against rounding at the edge
    left = torch.minimum(left, width - w)
    return torch.stack((top, left, h, w), dim=1).to(torch.int64)


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``batch`` RandomResizedCrop boxes (top, left, height, width) as int64 (B, 4).

    Draws on ``generator``'s device (or ``device``, default CPU, when no generator).
    See :func:`crop_boxes_from_uniform` for the rule.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    u = torch.rand(batch, CROP_UNIFORMS, generator=generator, device=device)
    return crop_boxes_from_uniform(u, height, width, scale, ratio)


def crop_theta(boxes: Tensor, flip: Tensor | None, height: int, width: int) -> Tensor:
    """Affine matrices (B, 2, 3) for ``F.affine_grid(..., align_corners=False)`` that
    map the output onto each box (pixel edges ``left .. left+width``), x mirrored where ``flip``."""
    top, left, h, w = boxes.to(torch.float32).unbind(dim=1)
    sx, sy = w / width, h / height
    cx = (2 * left + w) / width - 1
    cy = (2 * top + h) / height - 1
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    return torch.stack((torch.stack((sx, zero, cx), 1), torch.stack((zero, sy, cy), 1)), 1)


def _axis_aligned_grid(theta: Tensor, out_h: int, out_w: int) -> Tensor:
    """Same grid as ``F.affine_grid(theta, (B, C, out_h, out_w), align_corners=False)`` for
    theta with zero off-diagonal terms, built by broadcasting (exact float32 on every device,
    no matmul that TF32 settings could round)."""
    dev = theta.device
    ux = (torch.arange(out_w, device=dev, dtype=torch.float32) * 2 + 1) / out_w - 1  # pixel centres
    uy = (torch.arange(out_h, device=dev, dtype=torch.float32) * 2 + 1) / out_h - 1
    gx = theta[:, 0, 0, None] * ux + theta[:, 0, 2, None]  # (B, out_w)
    gy = theta[:, 1, 1, None] * uy + theta[:, 1, 2, None]  # (B, out_h)
    b = theta.shape[0]
    return torch.stack((gx[:, None, :].expand(b, out_h, out_w), gy[:, :, None].expand(b, out_h, out_w)), dim=-1)


def crop_resize_flip(
    images: Tensor, boxes: Tensor, flip: Tensor | None, size: int, padding_mode: str = "border"
) -> Tensor:
    """Crop each box, resize it to ``size`` x ``size`` and mirror it where ``flip``, in one
    bilinear ``grid_sample`` (align_corners=False).

    Matches torchvision's ``resized_crop`` + ``hflip`` except that (1) there is no
    antialiasing when a crop is shrunk (torchvision v2 antialiases; crops of 32-96 px
    resized to 32-64 px are shrunk by at most ~1.5x, where the difference is small),
    and (2) bilinear taps at the crop's border read the pixels just outside the crop
    instead of repeating the crop's edge.
    """
    theta = crop_theta(boxes, flip, images.shape[-2], images.shape[-1])
    grid = _axis_aligned_grid(theta, size, size)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize to ``size`` x ``size`` (torchvision v2 ``Resize((size, size))``
    on float tensors); the input itself when it already has that size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the samples where ``flip`` (bool (B,)) horizontally, keep the others."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
