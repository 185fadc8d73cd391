"""Mixed views: mixup and CutMix of a batch with a partner permutation, per-sample lambda.

Used by the BSIM plug-in (docs/methods/bsim.md): the mixture
of image i with its partner perm[i] keeps ``lam`` of image i. Every random draw is reproducible
from the step's generator: lambda ~ Beta(alpha, alpha) is drawn on the host from a NumPy
generator seeded by the step generator's seed (no device sync), box positions on the device.
"""

from __future__ import annotations

import numpy as np
import torch

MIX_MODES = ("mixup", "cutmix", "both")


def partner_permutation(n: int, kind: str, generator: torch.Generator | None, device) -> torch.Tensor:
    """``reverse``: perm[i] = n - 1 - i (Un-Mix's pairing); ``random``: a random permutation."""
    if kind == "reverse":
        return torch.arange(n - 1, -1, -1, device=device)
    if kind == "random":
        return torch.randperm(n, generator=generator, device=device)
    raise ValueError(f"partner must be 'reverse' or 'random', got {kind!r}")


def sample_lambda(n: int, alpha: float, generator: torch.Generator | None, device, salt: int = 0) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha), reproducible from ``generator``'s seed."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    seed = generator.initial_seed() if generator is not None else int(torch.initial_seed())
    rng = np.random.default_rng([seed % (2**63), salt])
    return torch.from_numpy(rng.beta(alpha, alpha, size=n).astype(np.float32)).to(device, non_blocking=True)


def cutmix_masks(n: int, h: int, w: int, lam: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Boolean masks (n, 1, h, w), True inside a box of area about (1 - lam) * h * w taken from the partner.

    The box has the image's aspect ratio, a uniformly random centre, and is clipped at the border
    (so the kept area can exceed lam: use the returned masks to compute the effective lambda).
    """
    dev = lam.device
    cut = torch.sqrt((1.0 - lam).clamp(0, 1))
    ch, cw = cut * h, cut * w
    cy = torch.rand(n, generator=generator, device=dev) * h
    cx = torch.rand(n, generator=generator, device=dev) * w
    y0, y1 = (cy - ch / 2).clamp(0, h).round(), (cy + ch / 2).clamp(0, h).round()
    x0, x1 = (cx - cw / 2).clamp(0, w).round(), (cx + cw / 2).clamp(0, w).round()
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((ys >= y0.view(n, 1, 1)) & (ys < y1.view(n, 1, 1)) &
              (xs >= x0.view(n, 1, 1)) & (xs < x1.view(n, 1, 1)))
    return inside.unsqueeze(1)


def mix_batch(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, mode: str = "mixup",
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each image with its partner: returns (mixtures, effective lambda per sample).

    ``mixup``: x_i * lam_i + x_perm[i] * (1 - lam_i). ``cutmix``: a box of x_perm[i] pasted into x_i;
    the effective lambda is the kept-area fraction. ``both``: each sample takes mixup or CutMix
    with probability 1/2.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"mix mode must be one of {', '.join(MIX_MODES)}; got {mode!r}")
    n, _, h, w = x.shape
    partner = x[perm]
    lam = lam.to(x.device, torch.float32)
    if mode == "mixup":
        lv = lam.view(n, 1, 1, 1).to(x.dtype)
        return x * lv + partner * (1 - lv), lam
    masks = cutmix_masks(n, h, w, lam, generator)
    cut = torch.where(masks, partner, x)
    lam_cut = 1.0 - masks.flatten(1).float().mean(dim=1)
    if mode == "cutmix":
        return cut, lam_cut
    use_cut = torch.rand(n, generator=generator, device=x.device) < 0.5
    lv = lam.view(n, 1, 1, 1).to(x.dtype)
    mixed = torch.where(use_cut.view(n, 1, 1, 1), cut, x * lv + partner * (1 - lv))
    return mixed, torch.where(use_cut, lam_cut, lam)
