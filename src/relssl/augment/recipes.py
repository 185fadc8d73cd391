"""View recipes: what one augmented view of an image is made of.

A :class:`ViewRecipe` is plain data (a dataclass of numbers), validated when it
is built, so a typo or an out-of-range value fails at configuration time with a
one-line message naming the field and the allowed range. The presets in
:data:`RECIPES` are the papers' torchvision pipelines written as data; build a
variant with :func:`recipe`::

    recipe("weak", flip_p=0.9, crop_size=64)       # MSVQ's weak view on STL-10
    recipe({"preset": "strong", "blur_p": 0.0})    # from a YAML mapping
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ViewRecipe", "RECIPES", "recipe"]

_JITTER_ORDERS = ("random", "fixed")


def _as_pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"ViewRecipe.{name} must be a pair (low, high), got {value!r}")
    lo, hi = value
    try:
        return float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"ViewRecipe.{name} must be a pair of numbers, got {value!r}") from None


def _check_range(name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"ViewRecipe.{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        raise ValueError(f"ViewRecipe.{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ViewRecipe:
    """One view's random augmentation, applied per sample by :func:`relssl.augment.augment_batch`.

    The pipeline, in torchvision's order: RandomResizedCrop(crop_size, crop_scale,
    crop_ratio) (or, with ``crop=False``, a plain resize to crop_size),
    RandomHorizontalFlip(flip_p), RandomApply(ColorJitter(brightness, contrast,
    saturation, hue), jitter_p), RandomGrayscale(grayscale_p),
    RandomApply(GaussianBlur(blur_kernel, blur_sigma), blur_p),
    RandomSolarize(solarize_threshold, solarize_p), then ToDtype + Normalize.

    The defaults are the MoCo v2 "aug+" recipe at CIFAR size (preset ``"strong"``).
    """

    crop_size: int = 32
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_order: str = "random"
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 0
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    crop: bool = True  # False: no random crop, only resize the whole image to crop_size

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) or self.crop_size < 1:
            raise ValueError(f"ViewRecipe.crop_size must be an integer >= 1, got {self.crop_size!r}")
        lo, hi = _as_pair("crop_scale", self.crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"ViewRecipe.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale!r}")
        set_("crop_scale", (lo, hi))
        lo, hi = _as_pair("crop_ratio", self.crop_ratio)
        if not 0.0 < lo <= hi < math.inf:
            raise ValueError(f"ViewRecipe.crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio!r}")
        set_("crop_ratio", (lo, hi))
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            set_(name, _check_range(name, getattr(self, name), 0.0, 1.0))
        for name in ("brightness", "contrast", "saturation"):
            set_(name, _check_range(name, getattr(self, name), 0.0, math.inf))
        set_("hue", _check_range("hue", self.hue, 0.0, 0.5))
        if self.jitter_order not in _JITTER_ORDERS:
            raise ValueError(f"ViewRecipe.jitter_order must be one of {list(_JITTER_ORDERS)}, got {self.jitter_order!r}")
        lo, hi = _as_pair("blur_sigma", self.blur_sigma)
        if not 0.0 < lo <= hi < math.inf:
            raise ValueError(f"ViewRecipe.blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma!r}")
        set_("blur_sigma", (lo, hi))
        k = self.blur_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or (k > 0 and k % 2 == 0):
            raise ValueError(f"ViewRecipe.blur_kernel must be 0 (auto) or an odd integer >= 1, got {k!r}")
        set_("solarize_threshold", _check_range("solarize_threshold", self.solarize_threshold, 0.0, 1.0))
        if not isinstance(self.crop, bool):
            raise ValueError(f"ViewRecipe.crop must be true or false, got {self.crop!r}")

    # ------------------------------------------------------------------ derived
    def kernel_size(self) -> int:
        """The blur kernel used at this crop size: ``blur_kernel`` if set, else odd
        ``2*ceil(3*sigma_max)+1``; never larger than the crop (largest odd <= crop_size)."""
        k = self.blur_kernel or 2 * math.ceil(3.0 * self.blur_sigma[1]) + 1
        cap = self.crop_size if self.crop_size % 2 == 1 else self.crop_size - 1
        return max(1, min(k, cap))

    @property
    def uses_jitter(self) -> bool:
        return self.jitter_p > 0 and (self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.hue > 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), e.g. for YAML or a JSON record."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}


_NO_COLOR = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)

#: Named presets. Sizes are CIFAR's (32); override ``crop_size`` for other datasets.
RECIPES: dict[str, ViewRecipe] = {
    # MoCo v2 aug+ (docs/methods/small-data-recipe.md, "strong"; also MSVQ/ASCL/WCL's strong view).
    "strong": ViewRecipe(),
    # RandomResizedCrop(0.2-1) + flip only (ASCL weak; MSVQ uses flip_p=0.9).
    "weak": ViewRecipe(**_NO_COLOR),
    # SimCLR: RRC 0.08-1, jitter(0.8, 0.8, 0.8, 0.2) w.p. 0.8, grayscale 0.2, blur 0.5.
    "simclr": ViewRecipe(crop_scale=(0.08, 1.0), brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),
    # BYOL's asymmetric pair: jitter(0.4, 0.4, 0.2, 0.1) w.p. 0.8, gray 0.2, blur 1.0 / 0.1, solarize 0.0 / 0.2.
    "byol_a": ViewRecipe(crop_scale=(0.08, 1.0), saturation=0.2, blur_p=1.0, solarize_p=0.0),
    "byol_b": ViewRecipe(crop_scale=(0.08, 1.0), saturation=0.2, blur_p=0.1, solarize_p=0.2),
    # Linear-probe training: torchvision RandomResizedCrop defaults (0.08-1) + flip.
    "linear": ViewRecipe(crop_scale=(0.08, 1.0), **_NO_COLOR),
    # Nothing random: resize to crop_size (antialiased, like eval_batch) and normalise.
    "none": ViewRecipe(crop=False, flip_p=0.0, **_NO_COLOR),
}

_FIELDS = tuple(f.name for f in fields(ViewRecipe))
_BASE_KEYS = ("preset",)


def recipe(name_or_dict: str | Mapping[str, Any] | ViewRecipe = "strong", **overrides: Any) -> ViewRecipe:
    """Build a :class:`ViewRecipe` from a preset name, a mapping or a recipe, plus overrides.

    A mapping may name its base preset under ``"preset"``; its other keys (and
    ``overrides``) replace fields of that base (default: the ``ViewRecipe``
    defaults). Unknown presets or fields raise ``ValueError`` listing the allowed ones.
    """
    if isinstance(name_or_dict, ViewRecipe):
        base, values = name_or_dict, {}
    elif isinstance(name_or_dict, str):
        base, values = _preset(name_or_dict), {}
    elif isinstance(name_or_dict, Mapping):
        values = dict(name_or_dict)
        base = _preset(values.pop("preset")) if "preset" in values else ViewRecipe()
    else:
        raise ValueError(f"recipe() takes a preset name, a mapping or a ViewRecipe, got {type(name_or_dict).__name__}")
    values.update(overrides)
    unknown = sorted(k for k in values if k not in _FIELDS)
    if unknown:
        raise ValueError(f"unknown ViewRecipe field(s) {unknown}; allowed: {list(_FIELDS) + list(_BASE_KEYS)}")
    return dataclasses.replace(base, **values)


def _preset(name: Any) -> ViewRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation preset {name!r}; allowed: {sorted(RECIPES)}")
    return RECIPES[name]

