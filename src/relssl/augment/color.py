"""Photometric ops with one parameter per sample, on float images in [0, 1].

Every function takes a batch (B, C, H, W), C = 1 or 3, and per-sample parameters
of shape (B,). torchvision's functional ops take one scalar for the whole batch;
with the same value in every sample these give torchvision's result (to float
rounding; ``tests/test_augment.py`` checks it). No op loops over samples, reads
a tensor back to the host or changes shape with the data, so the whole pipeline
runs under CUDA graphs / ``torch.compile``. Samples an op should leave alone get
the op's identity parameter (factor 1, shift 0) or a ``mask``, and come out
bit-identical.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "GRAY_WEIGHTS",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "random_grayscale",
    "gaussian_kernels",
    "gaussian_blur",
    "solarize",
]

#: Luma weights (ITU-R 601-2) exactly as torchvision writes them (0.2989, not 0.299).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# op codes in a jitter order row (torchvision ColorJitter's fn_idx numbering)
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def _col(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting over an image batch."""
    return v.view(-1, 1, 1, 1)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma (B, 1, H, W) of RGB images (``torchvision ... rgb_to_grayscale`` on floats,
    same arithmetic); a 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return torch.mul(r, GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(x: Tensor, ref: Tensor, factor: Tensor) -> Tensor:
    """``factor * x + (1 - factor) * ref`` clamped to [0, 1], per sample (torchvision
    ``_blend``), computed as ``lerp(ref, x, factor)``: one pass, and exactly ``x`` at factor 1."""
    return torch.lerp(ref, x, _col(factor).to(x.dtype)).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``x * factor`` clamped to [0, 1] (``adjust_brightness``, one factor per sample)."""
    return (x * _col(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean luma (``adjust_contrast``, one factor per sample)."""
    mean = rgb_to_grayscale(x).mean(dim=(-2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the luma image (``adjust_saturation``, one factor per sample); a no-op on 1 channel."""
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), factor)


# ---------------------------------------------------------------------------- hue
# RGB <-> HSV through (hue in sextants h6 in [0, 6), value v = max, chroma c = max - min).
# Shifting the hue keeps v and c, so adjust_hue never forms the saturation channel.
# Branches are products with 0/1 float masks (exact for finite values) and most steps
# are in place: on CPU, torch.where / comparisons / remainder and fresh allocations cost
# several times an in-place multiply (on GPU all of this is one fused kernel under compile).


def _wrap6_(h: Tensor) -> Tensor:
    """``h mod 6`` in place, in [0, 6] (floor-based: cheaper than torch.remainder on CPU;
    6 itself can appear by rounding and means the same hue as 0)."""
    return h.sub_(torch.floor(h * (1.0 / 6.0)).mul_(6.0))


def _is_zero(d: Tensor) -> Tensor:
    """1.0 where ``d == 0``, else 0.0, for ``d >= 0`` (a fresh tensor)."""
    return d.sign().neg_().add_(1.0)


def _hue_value_chroma(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(dim=1)
    v = torch.maximum(r, g)
    torch.maximum(v, b, out=v)
    c = torch.minimum(r, g)
    torch.minimum(c, b, out=c)
    torch.sub(v, c, out=c)  # chroma
    # sextant of the largest channel, ties resolved r, then g, then b (as PIL / torchvision)
    is_r = _is_zero(v - r)
    not_r = 1.0 - is_r
    is_g = _is_zero(v - g).mul_(not_r)
    is_b = not_r.sub_(is_g)
    num = (g - b).mul_(is_r).addcmul_(b - r, is_g).addcmul_(r - g, is_b)
    h6 = num.div_(_is_zero(c).add_(c))  # grays: 0 / 1
    return _wrap6_(h6.add_(is_g, alpha=2.0).add_(is_b, alpha=4.0)), v, c


def _rgb_from_hue_value_chroma(h6: Tensor, v: Tensor, c: Tensor) -> Tensor:
    # channel n (r: 5, g: 3, b: 1): v - c * clamp(min(k, 4 - k), 0, 1), k = (n + h6) mod 6
    n = (5.0 - 2.0 * torch.arange(3, device=h6.device, dtype=h6.dtype)).view(1, 3, 1, 1)  # 5, 3, 1
    k = _wrap6_(n + h6.unsqueeze(1))
    k = torch.minimum(k, 4.0 - k, out=k).clamp_(0.0, 1.0)
    return k.mul_(c.unsqueeze(1)).neg_().add_(v.unsqueeze(1))


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB (B, 3, H, W) in [0, 1] to HSV, each channel in [0, 1] (hue 0 for grays;
    the same convention as torchvision's internal ``_rgb_to_hsv``)."""
    h6, v, c = _hue_value_chroma(x)
    s = c / torch.where(v > 0, v, torch.ones_like(v))
    return torch.stack((h6.div_(6.0).remainder_(1.0), s, v), dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV (B, 3, H, W) to RGB, inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv.unbind(dim=1)
    return _rgb_from_hue_value_chroma(h * 6.0, v, v * s)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by ``shift`` (fraction of a turn, in [-0.5, 0.5]) per sample
    (``adjust_hue``); samples with shift 0, and 1-channel images, are returned unchanged."""
    if x.shape[1] == 1:
        return x
    h6, v, c = _hue_value_chroma(x)
    h6 = h6.add_(shift.to(x.dtype).view(-1, 1, 1), alpha=6.0)  # wrapped per channel below
    return torch.where(_col(shift != 0), _rgb_from_hue_value_chroma(h6, v, c), x)


# ------------------------------------------------------------------- color jitter


def _blend_pass(x: Tensor, factor: Tensor, w_gray: Tensor, w_mean: Tensor) -> Tensor:
    """One jitter position for every sample: ``blend(x, ref, factor)`` with
    ref = w_gray * luma + w_mean * mean luma, which is brightness (weights 0, 0),
    contrast (0, 1), saturation (1, 0), or nothing (factor 1)."""
    gray = rgb_to_grayscale(x)
    mean = gray.mean(dim=(-2, -1), keepdim=True)
    ref = gray.mul(_col(w_gray)).add_(mean * _col(w_mean))
    return _blend(x, ref, factor)


def _blend_passes(x: Tensor, ops: Tensor, factors: Tensor) -> Tensor:
    """Apply the blend op ``ops[:, k]`` (0 brightness, 1 contrast, 2 saturation, -1 none)
    for k = 0, 1, ... in turn; all per-position coefficients are computed up front."""
    f = torch.where(ops >= 0, factors.gather(1, ops.clamp(min=0)), 1.0)
    w_gray = (ops == SATURATION).to(x.dtype)
    w_mean = (ops == CONTRAST).to(x.dtype)
    for k in range(ops.shape[1]):
        x = _blend_pass(x, f[:, k], w_gray[:, k], w_mean[:, k])
    return x


def color_jitter(x: Tensor, factors: Tensor, order: Tensor | None = None, hue: bool = True) -> Tensor:
    """ColorJitter with per-sample parameters and per-sample order.

    ``factors`` (B, 4): brightness, contrast, saturation factors (1 = unchanged) and
    the hue shift (0 = unchanged). ``order`` (B, 4): a permutation of 0..3 per sample
    (0 brightness, 1 contrast, 2 saturation, 3 hue: torchvision's numbering), or None
    for the fixed order b, c, s, h. Samples that should not be jittered get the
    identity parameters. ``hue=False`` skips the hue pass (every shift is 0).
    Saturation and hue are no-ops on 1-channel images (as in torchvision).

    Cost: brightness, contrast and saturation are all blends, so each position is one
    pass whatever op each sample has there, and hue runs once: a random order costs
    6 blend passes (the positions before and after each sample's hue) + 1 hue pass
    (3 blend passes without hue), not 4 x 4 op evaluations.
    """
    b = x.shape[0]
    factors = factors.to(x.dtype)
    gray_input = x.shape[1] == 1  # saturation and hue do nothing to 1-channel images
    hue = hue and not gray_input
    n_blend = 2 if gray_input else 3
    if order is None:  # fixed order: brightness, contrast, saturation, hue
        x = _blend_passes(x, torch.arange(n_blend, device=x.device).expand(b, n_blend), factors)
        return adjust_hue(x, factors[:, HUE]) if hue else x
    is_hue = (order == HUE).to(torch.uint8)
    if not hue:  # drop the no-op ops from every row, keeping the order of the others
        drop = (order >= n_blend).to(torch.uint8)
        return _blend_passes(x, order.gather(1, drop.argsort(dim=1, stable=True))[:, :n_blend], factors)
    pos = is_hue.argmax(dim=1, keepdim=True)  # where hue sits in each row
    slots = torch.arange(3, device=x.device).unsqueeze(0)
    before = torch.where(slots < pos, order[:, :3], -1)
    after_idx = pos + 1 + slots
    after = torch.where(after_idx < 4, order.gather(1, after_idx.clamp(max=3)), -1)
    x = _blend_passes(x, before, factors)
    x = adjust_hue(x, factors[:, HUE])
    return _blend_passes(x, after, factors)


def random_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Luma replicated to 3 channels where ``mask`` (``rgb_to_grayscale(x, 3)``, i.e.
    RandomGrayscale's op); 1-channel images are returned unchanged."""
    if x.shape[1] == 1:
        return x
    return torch.where(_col(mask), rgb_to_grayscale(x).expand_as(x), x)


# --------------------------------------------------------------------------- blur


def gaussian_kernels(sigma: Tensor, kernel_size: int, radius: Tensor | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps (B, kernel_size) at integer offsets, one row per sigma
    (torchvision ``_get_gaussian_kernel1d``). ``radius`` (B,) truncates row i to offsets
    ``|t| <= radius[i]`` (a smaller kernel padded with zeros)."""
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=sigma.device, dtype=torch.float32)
    logits = -0.5 * (t / sigma.to(torch.float32).unsqueeze(1)) ** 2
    if radius is not None:
        logits = logits.masked_fill(t.abs() > radius.unsqueeze(1), float("-inf"))
    return torch.softmax(logits, dim=1)


def _reflect_blur_matrices(taps: Tensor, n: int) -> Tensor:
    """(B, n, n) matrices M with ``M @ v`` = v convolved with each row of ``taps`` (B, k)
    under reflect padding (``F.pad(mode="reflect")``: d c b | a b c d | c b a).

    Built as ``taps @ P`` with P (k, n*n) the fixed 0/1 map from (tap, output) to source
    index (deterministic on every device, unlike a scatter_add with atomics)."""
    k = taps.shape[1]
    half = k // 2
    dev = taps.device
    src = torch.arange(n, device=dev).unsqueeze(0) + torch.arange(-half, half + 1, device=dev).unsqueeze(1)  # (k, n)
    src = src.abs()  # reflect at the start
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)  # reflect at the end
    onehot = (src.unsqueeze(-1) == torch.arange(n, device=dev)).to(taps.dtype)  # (k, n_out, n_src)
    return (taps @ onehot.view(k, n * n)).view(-1, n, n)


def gaussian_blur(
    x: Tensor, sigma: Tensor, kernel_size: int, mask: Tensor | None = None, radius: Tensor | None = None
) -> Tensor:
    """Gaussian blur with one sigma per sample (``gaussian_blur`` with kernel (k, k) and
    sigma (s, s), reflect padding). Separable: each sample's 1-D kernel and the reflect
    padding are folded into an (H, H) and a (W, W) matrix, and the blur is two batched
    matmuls ``M_h @ x @ M_w^T`` (one kernel each on any device; with TF32 matmuls enabled
    on a GPU the blur is computed in TF32). Samples outside ``mask`` are unchanged."""
    bsz, ch, h, w = x.shape
    if kernel_size <= 1:
        return x
    if kernel_size // 2 >= min(h, w):
        raise ValueError(f"blur kernel {kernel_size} too large for {h}x{w} images (reflect padding)")
    taps = gaussian_kernels(sigma, kernel_size, radius).to(x.dtype)
    m_h = _reflect_blur_matrices(taps, h).unsqueeze(1)  # (B, 1, H, H)
    m_w = m_h if w == h else _reflect_blur_matrices(taps, w).unsqueeze(1)
    y = torch.matmul(torch.matmul(m_h, x), m_w.transpose(-1, -2))
    return y if mask is None else torch.where(_col(mask), y, x)


def solarize(x: Tensor, threshold: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """``1 - x`` where ``x >= threshold`` (``solarize`` on floats), per-sample threshold
    and, if given, only on the samples in ``mask``."""
    thr = _col(threshold).to(x.dtype) if isinstance(threshold, Tensor) else threshold
    hit = (x - thr).sign_().add_(1.0).clamp_(max=1.0)  # 1.0 where x >= thr, else 0.0
    if mask is not None:
        hit.mul_(_col(mask).to(x.dtype))
    return torch.lerp(x, 1.0 - x, hit)  # exact select: weight 0 -> x, weight 1 -> 1 - x
