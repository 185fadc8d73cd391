"""Batched views: uint8 images on any device -> normalised float views, random per sample.

All the randomness of one view is one ``torch.rand(B, 36, generator=...)`` on the
images' device, drawn in recipe order; everything after it is deterministic
tensor code with static shapes (no host sync, no Python loop over samples), so
the same seed gives the same views and the code can be captured by CUDA graphs
or ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from .color import color_jitter, gaussian_blur, random_grayscale, solarize
from .geometry import CROP_UNIFORMS, crop_boxes_from_uniform, crop_resize_flip, hflip, resize
from .recipes import ViewRecipe
from .recipes import recipe as _make_recipe

__all__ = ["augment_batch", "make_views", "eval_batch", "views_from_uniforms", "draw_uniforms", "to_float", "normalize", "N_UNIFORMS"]

# columns of the per-view uniform draw
_C_CROP = slice(0, CROP_UNIFORMS)
_C_FLIP = CROP_UNIFORMS
_C_JITTER = CROP_UNIFORMS + 1
_C_FACTORS = slice(CROP_UNIFORMS + 2, CROP_UNIFORMS + 6)
_C_ORDER = slice(CROP_UNIFORMS + 6, CROP_UNIFORMS + 10)
_C_GRAY = CROP_UNIFORMS + 10
_C_BLUR = CROP_UNIFORMS + 11
_C_SIGMA = CROP_UNIFORMS + 12
_C_SOLARIZE = CROP_UNIFORMS + 13
N_UNIFORMS = CROP_UNIFORMS + 14


# ----------------------------------------------------------------------- helpers


def to_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1] (``ToDtype(float32, scale=True)``); float
    input is taken to be in [0, 1] already and only cast to float32. Keeps the memory format."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32)
    raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")


def _mean_std(mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(scale, shift) of shape (1, C, 1, 1) with ``x * scale + shift == (x - mean) / std``."""
    try:
        key = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    except TypeError:
        raise ValueError(f"mean and std must be sequences of numbers, got {mean!r} and {std!r}") from None
    if torch.compiler.is_compiling():  # constants get baked into the graph; no cache needed
        return _norm_constants.__wrapped__(*key, channels, device)
    return _norm_constants(*key, channels, device)


@lru_cache(maxsize=64)
def _norm_constants(mean: tuple[float, ...], std: tuple[float, ...], channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    for name, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, channels):
            raise ValueError(f"{name} must have 1 or {channels} values (one per channel), got {len(v)}")
    if any(not s > 0 for s in std):
        raise ValueError(f"std must be positive, got {list(std)}")
    m = torch.tensor(mean, dtype=torch.float32).expand(channels)
    s = torch.tensor(std, dtype=torch.float32).expand(channels)
    return (1.0 / s).view(1, -1, 1, 1).to(device), (-m / s).view(1, -1, 1, 1).to(device)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float], memory_format: torch.memory_format | None = None) -> Tensor:
    """``(x - mean) / std`` per channel (``Normalize``), as one fused multiply-add
    ``x * (1/std) + (-mean/std)`` written into a fresh tensor of ``memory_format``
    (default: contiguous)."""
    scale, shift = _mean_std(mean, std, x.shape[1], x.device)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=memory_format or torch.contiguous_format)
    return torch.addcmul(shift, x, scale, out=out)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor with C = 1 or 3, got {shape}")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    g = generator.device
    if g.type != device.type or (g.index is not None and device.index is not None and g.index != device.index):
        raise ValueError(f"generator is on {g} but the images are on {device}; create it with torch.Generator(device=images.device)")


def _out_format(images: Tensor) -> torch.memory_format:
    """channels_last output for channels_last (non-trivially strided) input, contiguous otherwise."""
    if images.shape[1] > 1 and not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _as_recipe(r: Any) -> ViewRecipe:
    return r if isinstance(r, ViewRecipe) else _make_recipe(r)


# ------------------------------------------------------------------- parameters


def _geometry(x: Tensor, r: ViewRecipe, u: Tensor) -> Tensor:
    """Crop + resize + flip of one view (float images in, (B, C, S, S) out)."""
    flip = u[:, _C_FLIP] < r.flip_p if r.flip_p > 0 else None
    if r.crop:
        boxes = crop_boxes_from_uniform(u[:, _C_CROP], x.shape[-2], x.shape[-1], r.crop_scale, r.crop_ratio)
        return crop_resize_flip(x, boxes, flip, r.crop_size)
    y = resize(x, r.crop_size)
    return y if flip is None else hflip(y, flip)


@lru_cache(maxsize=64)
def _jitter_constants(r: ViewRecipe, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Low / high ends of the jitter factor ranges and the identity factors, made once per device."""
    lo = [max(0.0, 1 - r.brightness), max(0.0, 1 - r.contrast), max(0.0, 1 - r.saturation), -r.hue]
    hi = [1 + r.brightness, 1 + r.contrast, 1 + r.saturation, r.hue]
    return tuple(torch.tensor(v, device=device) for v in (lo, hi, [1.0, 1.0, 1.0, 0.0]))  # type: ignore[return-value]


def _photometric_params(r: ViewRecipe, u: Tensor) -> dict[str, Tensor]:
    """Per-sample colour parameters of one view, identity values where the op is not drawn."""
    consts = _jitter_constants.__wrapped__ if torch.compiler.is_compiling() else _jitter_constants
    lo, hi, identity = consts(r, u.device)
    jitter = (u[:, _C_JITTER] < r.jitter_p).unsqueeze(1)
    factors = torch.where(jitter, lo + (hi - lo) * u[:, _C_FACTORS], identity)
    if r.jitter_order == "random":
        order = u[:, _C_ORDER].argsort(dim=1)  # uniform random permutation per sample
    else:
        order = torch.arange(4, device=u.device).expand(u.shape[0], 4)
    s_lo, s_hi = r.blur_sigma
    n = u.shape[0]
    return {
        "factors": factors,
        "order": order,
        "gray": u[:, _C_GRAY] < r.grayscale_p,
        "blur": u[:, _C_BLUR] < r.blur_p,
        "sigma": s_lo + (s_hi - s_lo) * u[:, _C_SIGMA],
        "radius": torch.full((n,), r.kernel_size() // 2, device=u.device),
        "solarize": u[:, _C_SOLARIZE] < r.solarize_p,
        "threshold": torch.full((n,), r.solarize_threshold, device=u.device),
    }


def _uses_colour(r: ViewRecipe) -> bool:
    return r.uses_jitter or r.grayscale_p > 0 or r.blur_p > 0 or r.solarize_p > 0


def _photometric(x: Tensor, recipes: Sequence[ViewRecipe], p: dict[str, Tensor]) -> Tensor:
    """Jitter, grayscale, blur, solarize on views concatenated along the batch (same size)."""
    if any(r.uses_jitter for r in recipes):
        random_order = any(r.jitter_order == "random" for r in recipes)
        hue = any(r.uses_jitter and r.hue > 0 for r in recipes)
        x = color_jitter(x, p["factors"], p["order"] if random_order else None, hue=hue)
    if any(r.grayscale_p > 0 for r in recipes):
        x = random_grayscale(x, p["gray"])
    blurring = [r for r in recipes if r.blur_p > 0]
    if blurring:
        kernels = {r.kernel_size() for r in blurring}
        radius = p["radius"] if len(kernels) > 1 else None
        x = gaussian_blur(x, p["sigma"], max(kernels), mask=p["blur"], radius=radius)
    if any(r.solarize_p > 0 for r in recipes):
        x = solarize(x, p["threshold"], mask=p["solarize"])
    return x


# ----------------------------------------------------------------------- public


def draw_uniforms(batch: int, n_views: int, generator: torch.Generator | None, device: torch.device | str) -> list[Tensor]:
    """All the randomness of ``n_views`` views of ``batch`` images: one float32
    ``(batch, N_UNIFORMS)`` tensor of U[0, 1) draws per view, in view order."""
    return [torch.rand(batch, N_UNIFORMS, generator=generator, device=device) for _ in range(n_views)]


def make_views(
    images: Tensor,
    recipes: Sequence[ViewRecipe | str | Mapping[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator | None,
    *,
    memory_format: torch.memory_format | None = None,
) -> list[Tensor]:
    """One augmented, normalised view of every image per recipe.

    ``images``: uint8 (B, C, H, W), C = 1 or 3, on any device (float in [0, 1] is
    accepted too). Returns a list of float32 (B, C, S, S) tensors on that device,
    S = each recipe's ``crop_size``, written directly in ``memory_format`` (default: channels_last
    if ``images`` is channels_last, else contiguous). Random draws come from ``generator`` (on the images' device; None = torch's
    global generator), one ``torch.rand`` per view in recipe order, so
    ``make_views(x, [r1, r2], ...)[0]`` equals ``augment_batch(x, r1, ...)`` under the
    same seed. Views of the same size share one pass of the colour ops.

    Equivalent to ``views_from_uniforms(images, recipes, mean, std,
    draw_uniforms(B, len(recipes), generator, images.device))``; compile or graph-capture
    :func:`views_from_uniforms` (it has no random calls) and draw outside it.
    """
    _check_images(images)
    _check_generator(generator, images.device)
    uniforms = draw_uniforms(images.shape[0], len(recipes), generator, images.device)
    return views_from_uniforms(images, recipes, mean, std, uniforms, memory_format=memory_format)


def views_from_uniforms(
    images: Tensor,
    recipes: Sequence[ViewRecipe | str | Mapping[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
    uniforms: Sequence[Tensor],
    *,
    memory_format: torch.memory_format | None = None,
) -> list[Tensor]:
    """The deterministic part of :func:`make_views`: views from pre-drawn uniforms (one
    (B, N_UNIFORMS) tensor per recipe, see :func:`draw_uniforms`). Static shapes, no host
    sync, no random calls: runs under ``torch.compile(fullgraph=True)`` and CUDA graphs."""
    _check_images(images)
    rs = [_as_recipe(r) for r in recipes]
    if len(uniforms) != len(rs):
        raise ValueError(f"need one uniforms tensor per recipe: {len(rs)} recipes, {len(uniforms)} tensors")
    if not rs:
        return []
    x = to_float(images)
    n = x.shape[0]
    fmt = memory_format or _out_format(images)
    out: list[Tensor | None] = [None] * len(rs)
    # views of one size that use colour ops share one pass of them (fewer launches on a GPU);
    # views without colour ops (e.g. "weak") are not dragged through it
    keys = [(r.crop_size, _uses_colour(r)) for r in rs]
    for key in dict.fromkeys(keys):  # first-seen order
        idx = [i for i, k in enumerate(keys) if k == key]
        group = [rs[i] for i in idx]
        views = [_geometry(x, rs[i], uniforms[i]) for i in idx]
        params = [_photometric_params(rs[i], uniforms[i]) for i in idx]
        if len(idx) == 1:
            y, p = views[0], params[0]
        else:
            y = torch.cat(views)
            p = {k: torch.cat([q[k] for q in params]) for k in params[0]}
        y = normalize(_photometric(y, group, p), mean, std, memory_format=fmt)
        for i, chunk in zip(idx, y.split(n)):
            out[i] = chunk
    return out  # type: ignore[return-value]


def augment_batch(
    images: Tensor,
    recipe: ViewRecipe | str | Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator | None,
    *,
    memory_format: torch.memory_format | None = None,
) -> Tensor:
    """One augmented, normalised view (float32 (B, C, S, S), S = ``recipe.crop_size``) of
    every image in a uint8 (B, C, H, W) batch, random per sample, on the images' device.
    ``recipe`` may also be a preset name or mapping (see :func:`relssl.augment.recipe`).
    See :func:`make_views`."""
    return make_views(images, [recipe], mean, std, generator, memory_format=memory_format)[0]


def eval_batch(
    images: Tensor,
    size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    memory_format: torch.memory_format | None = None,
) -> Tensor:
    """No randomness: resize to ``size`` x ``size`` (bilinear, antialiased) if needed
    (``size=None`` keeps the input size), convert to float and normalise (float32, in
    ``memory_format``; default: the input's, channels_last or contiguous)."""
    _check_images(images)
    x = to_float(images)
    if size is not None:
        x = resize(x, int(size))
    return normalize(x, mean, std, memory_format=memory_format or _out_format(images))
