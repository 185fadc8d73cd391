"""Batched, per-sample random augmentations on the images' device.

One call turns a uint8 batch (B, C, H, W) into normalised float views, each
sample with its own random crop, flip, colour jitter, grayscale, blur and
solarisation, with every random draw taken from the ``torch.Generator`` passed
in (reproducible under a seed), no Python loop over samples and no host sync::

    from relssl.augment import RECIPES, make_views, recipe

    g = torch.Generator(device=images.device).manual_seed(0)
    q, k = make_views(images, [RECIPES["strong"]] * 2, mean, std, g)
    weak = recipe("weak", flip_p=0.9)

Modules: :mod:`.recipes` (what a view is), :mod:`.geometry` (crop/resize/flip),
:mod:`.color` (per-sample photometric ops), :mod:`.pipeline` (the batched calls).
"""

from .color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    hsv_to_rgb,
    random_grayscale,
    rgb_to_grayscale,
    rgb_to_hsv,
    solarize,
)
from .geometry import crop_resize_flip, sample_crop_boxes
from .pipeline import N_UNIFORMS, augment_batch, draw_uniforms, eval_batch, make_views, normalize, to_float, views_from_uniforms
from .recipes import RECIPES, ViewRecipe, recipe

__all__ = [
    "ViewRecipe",
    "RECIPES",
    "recipe",
    "augment_batch",
    "make_views",
    "eval_batch",
    "draw_uniforms",
    "views_from_uniforms",
    "N_UNIFORMS",
    "sample_crop_boxes",
    "crop_resize_flip",
    "to_float",
    "normalize",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "random_grayscale",
    "gaussian_blur",
    "solarize",
]
