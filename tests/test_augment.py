"""Tests of relssl.augment: batched per-sample augmentations.

Reference behaviour is torchvision's (v2 functional ops and RandomResizedCrop.get_params),
applied one sample at a time in the tests.
"""

from __future__ import annotations

import os

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from relssl.augment import (
    RECIPES,
    ViewRecipe,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_batch,
    color_jitter,
    draw_uniforms,
    eval_batch,
    gaussian_blur,
    hsv_to_rgb,
    make_views,
    random_grayscale,
    recipe,
    rgb_to_grayscale,
    rgb_to_hsv,
    sample_crop_boxes,
    solarize,
    views_from_uniforms,
)
from relssl.augment.pipeline import N_UNIFORMS

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # mean/std that leave [0, 1] values as they are


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_u8(b: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w or h), dtype=torch.uint8, generator=gen(seed))


def only(**kw) -> ViewRecipe:
    """The identity recipe ("none": resize only) plus the given fields."""
    return recipe("none", **kw)


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize(
    "c,h,size", [(1, 28, 32), (3, 32, 32), (3, 96, 64), (1, 28, 28), (3, 17, 9)]
)
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shapes_dtypes(name, c, h, size):
    x = rand_u8(6, c, h)
    r = recipe(name, crop_size=size)
    y = augment_batch(x, r, [0.5] * c, [0.25] * c, gen())
    assert y.shape == (6, c, size, size) and y.dtype == torch.float32 and y.device == x.device
    assert y.is_contiguous() and torch.isfinite(y).all()


def test_channels_last_in_channels_last_out():
    x = rand_u8(4, 3, 32).contiguous(memory_format=torch.channels_last)
    for r in (RECIPES["strong"], RECIPES["none"]):
        y = augment_batch(x, r, ZERO, ONE, gen())
        assert y.is_contiguous(memory_format=torch.channels_last)
        ref = augment_batch(x.contiguous(), r, ZERO, ONE, gen())
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    assert eval_batch(x, 32, ZERO, ONE).is_contiguous(memory_format=torch.channels_last)
    # asked for explicitly: written in that format, same values
    x = rand_u8(4, 3, 28)
    views = make_views(x, [RECIPES["strong"], RECIPES["weak"]], ZERO, ONE, gen(), memory_format=torch.channels_last)
    ref = make_views(x, [RECIPES["strong"], RECIPES["weak"]], ZERO, ONE, gen())
    for v, r in zip(views, ref):
        assert v.is_contiguous(memory_format=torch.channels_last) and torch.equal(v, r)
    assert eval_batch(x, 32, ZERO, ONE, memory_format=torch.channels_last).is_contiguous(memory_format=torch.channels_last)


def test_determinism_and_seed_sensitivity():
    x = rand_u8(16, 3, 32)
    for name in ("strong", "simclr", "byol_b"):
        a = augment_batch(x, RECIPES[name], ZERO, ONE, gen(1))
        b = augment_batch(x, RECIPES[name], ZERO, ONE, gen(1))
        c = augment_batch(x, RECIPES[name], ZERO, ONE, gen(2))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    # per-sample randomness: identical images get different views
    same = x[:1].expand(16, -1, -1, -1)
    v = augment_batch(same, RECIPES["strong"], ZERO, ONE, gen())
    assert len({tuple(row.flatten()[:64].tolist()) for row in v}) == 16


def test_make_views_matches_single_calls():
    """Views of the same size share one colour pass; each must equal its own call."""
    x = rand_u8(8, 3, 40)
    rs = [recipe("byol_a"), recipe("byol_b", blur_kernel=5), recipe("weak", crop_size=16), recipe("strong")]
    views = make_views(x, rs, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), gen(3))
    g = gen(3)
    for r, v in zip(rs, views):
        ref = augment_batch(x, r, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), g)  # advances g by one view
        assert v.shape == ref.shape
        torch.testing.assert_close(v, ref, rtol=0, atol=1e-6)
    # and each view of make_views used exactly one draw of N_UNIFORMS per sample
    g = gen(3)
    torch.rand(8, N_UNIFORMS, generator=g)
    torch.testing.assert_close(views[1], augment_batch(x, rs[1], (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), g), rtol=0, atol=1e-6)


def test_views_from_uniforms_is_the_deterministic_part():
    x = rand_u8(8, 3, 32)
    rs = [RECIPES["strong"], RECIPES["weak"]]
    u = draw_uniforms(8, 2, gen(4), "cpu")
    assert [t.shape for t in u] == [(8, N_UNIFORMS)] * 2
    a = views_from_uniforms(x, rs, ZERO, ONE, u)
    b = make_views(x, rs, ZERO, ONE, gen(4))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="one uniforms tensor per recipe"):
        views_from_uniforms(x, rs, ZERO, ONE, u[:1])


@pytest.mark.skipif(not os.environ.get("RELSSL_COMPILE_TESTS"), reason="set RELSSL_COMPILE_TESTS=1 (about 30 s of compiling)")
def test_views_from_uniforms_compiles_without_graph_breaks():
    x = rand_u8(16, 3, 32)
    rs = [RECIPES["strong"], recipe("byol_b", crop_size=16)]
    u = draw_uniforms(16, 2, gen(), "cpu")
    compiled = torch.compile(views_from_uniforms, fullgraph=True)
    for p, q in zip(compiled(x, rs, ZERO, ONE, u), views_from_uniforms(x, rs, ZERO, ONE, u)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4)


def test_identity_recipes_equal_eval_batch():
    mean, std = (0.49, 0.48, 0.45), (0.2, 0.2, 0.2)
    for h, size in ((28, 32), (32, 32), (96, 64)):
        x = rand_u8(5, 3, h)
        ref = eval_batch(x, size, mean, std)
        assert torch.equal(augment_batch(x, recipe("none", crop_size=size), mean, std, gen()), ref)
        if size >= h:  # a full-image crop through grid_sample: same as bilinear resize when not shrinking
            full = recipe("none", crop=True, crop_scale=(1.0, 1.0), crop_size=size)
            torch.testing.assert_close(augment_batch(x, full, mean, std, gen()), ref, rtol=0, atol=1e-4)
    x = rand_u8(3, 1, 28)
    expected = (x.float() / 255 - 0.3) / 0.2
    torch.testing.assert_close(eval_batch(x, None, [0.3], [0.2]), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(eval_batch(x, 28, [0.3], [0.2]), expected, rtol=0, atol=1e-5)
    # matches torchvision's Resize + ToDtype + Normalize
    x = rand_u8(2, 3, 96)
    tv = T.Compose([T.Resize((64, 64), antialias=True), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    torch.testing.assert_close(eval_batch(x, 64, mean, std), tv(x.float() / 255 * 1.0), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------- crops


def test_crop_boxes_within_ranges():
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(20000, 512, 512, scale, ratio, gen())
    top, left, h, w = boxes.T
    assert boxes.dtype == torch.int64
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 512).all() and (left + w <= 512).all()
    frac = (h * w).double() / 512**2
    assert frac.min() >= scale[0] * 0.99 and frac.max() <= 1.0
    aspect = w.double() / h.double()
    assert aspect.min() >= ratio[0] * 0.99 and aspect.max() <= ratio[1] * 1.01
    # log-ratio roughly uniform: both halves of the log range are used about equally
    assert abs((aspect.log() < 0).double().mean().item() - 0.5) < 0.03
    # offsets uniform over the free range
    free = (512 - h).clamp(min=1).double()
    assert abs((top.double() / free).mean().item() - 0.5) < 0.02


def test_crop_area_distribution_matches_torchvision():
    torch.manual_seed(0)
    for (hh, ww), scale in (((32, 32), (0.2, 1.0)), ((28, 28), (0.08, 1.0)), ((24, 48), (0.2, 1.0))):
        ratio = (3 / 4, 4 / 3)
        ref = torch.tensor(
            [(lambda p: p[2] * p[3])(T.RandomResizedCrop.get_params(torch.empty(1, hh, ww), list(scale), list(ratio)))
             for _ in range(3000)],
            dtype=torch.float64,
        ) / (hh * ww)
        ours = sample_crop_boxes(30000, hh, ww, scale, ratio, gen(1))
        frac = (ours[:, 2] * ours[:, 3]).double() / (hh * ww)
        assert abs(frac.mean().item() - ref.mean().item()) < 0.02, (hh, ww, scale)
        assert abs(frac.std().item() - ref.std().item()) < 0.02


def test_crop_fallback_is_central_with_clamped_ratio():
    # no candidate can fit a ratio of 2-3 at full area: torchvision's fallback
    for hh, ww in ((32, 32), (20, 90)):
        boxes = sample_crop_boxes(50, hh, ww, (1.0, 1.0), (2.0, 3.0), gen())
        i, j, h, w = T.RandomResizedCrop.get_params(torch.empty(1, hh, ww), [1.0, 1.0], [2.0, 3.0])
        assert (boxes == torch.tensor([i, j, h, w])).all()


def test_crop_grid_equals_affine_grid():
    from relssl.augment.geometry import _axis_aligned_grid, crop_theta

    boxes = sample_crop_boxes(64, 40, 30, (0.1, 1.0), (0.5, 2.0), gen())
    theta = crop_theta(boxes, torch.rand(64, generator=gen(1)) < 0.5, 40, 30)
    ref = torch.nn.functional.affine_grid(theta, [64, 3, 24, 24], align_corners=False)
    torch.testing.assert_close(_axis_aligned_grid(theta, 24, 24), ref, rtol=0, atol=1e-6)


def _ramp(b: int, size: int) -> torch.Tensor:
    """uint8 images whose red channel increases left to right, green top to bottom."""
    xs = torch.linspace(0, 255, size).round()
    img = torch.zeros(3, size, size)
    img[0] = xs.view(1, -1)
    img[1] = xs.view(-1, 1)
    return img.to(torch.uint8).expand(b, -1, -1, -1).contiguous()


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_flip_rate(p):
    x = _ramp(4000, 16)
    r = recipe("weak", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=p, crop_size=16)
    y = augment_batch(x, r, ZERO, ONE, gen())
    flipped = y[:, 0, :, 0].mean(1) > y[:, 0, :, -1].mean(1)
    assert abs(flipped.double().mean().item() - p) < 0.03
    # full crop, no resize: the views are the image or its mirror, to float rounding
    base = x[:1].float() / 255
    torch.testing.assert_close(y[~flipped], base.expand_as(y[~flipped]), rtol=0, atol=1e-5)
    torch.testing.assert_close(y[flipped], base.flip(-1).expand_as(y[flipped]), rtol=0, atol=1e-5)
    # vertical direction never flips
    assert (y[:, 1, 0, :].mean(1) < y[:, 1, -1, :].mean(1)).all()


def test_crops_show_the_right_region():
    """The coordinate image read back through a crop gives a box inside the image whose
    area fraction (at crop_size = image size) follows the crop scale."""
    x = _ramp(3000, 64)
    r = recipe("weak", flip_p=0.0, crop_size=64, crop_scale=(0.2, 1.0))
    y = augment_batch(x, r, ZERO, ONE, gen()) * 255 / (255 / 63)  # pixel coordinates
    width = y[:, 0, :, -1].mean(1) - y[:, 0, :, 0].mean(1)  # span of pixel centres read at the edges
    height = y[:, 1, -1, :].mean(1) - y[:, 1, 0, :].mean(1)
    # a box of w pixels resized to 64 puts its outer sample centres w * 63/64 apart
    frac = (width * height) / (63.0 * 63.0)
    assert frac.min() > 0.18 and frac.max() < 1.01
    ref = sample_crop_boxes(3000, 64, 64, (0.2, 1.0), (3 / 4, 4 / 3), gen(9))
    assert abs(frac.mean().item() - ((ref[:, 2] * ref[:, 3]).double() / 64**2).mean().item()) < 0.02


# ------------------------------------------------------------------- colour ops


def test_brightness_only_bounds_and_rate():
    x = rand_u8(2000, 3, 8)
    y = augment_batch(x, only(crop_size=8, jitter_p=0.8, brightness=0.4, contrast=0, saturation=0, hue=0), ZERO, ONE, gen())
    xf = x.float() / 255
    ok = (xf > 0.05) & (y < 0.999)
    ratio = torch.where(ok, y / xf.clamp(min=1e-6), torch.nan)
    lo, hi = ratio.nan_to_num(10.0).amin(dim=(1, 2, 3)), ratio.nan_to_num(-10.0).amax(dim=(1, 2, 3))
    assert lo.min() >= 0.6 - 1e-4 and hi.max() <= 1.4 + 1e-4
    assert (hi - lo).max() < 1e-4  # one factor per sample
    changed = (lo - 1).abs() > 1e-6
    assert abs(changed.double().mean().item() - 0.8) < 0.03
    assert lo.min() < 0.62 and hi.max() > 1.38  # the whole range is used


def test_grayscale_rate():
    x = rand_u8(4000, 3, 6)
    y = augment_batch(x, only(crop_size=6, grayscale_p=0.2), ZERO, ONE, gen())
    gray = (y[:, 0] == y[:, 1]).all(-1).all(-1) & (y[:, 1] == y[:, 2]).all(-1).all(-1)
    assert abs(gray.double().mean().item() - 0.2) < 0.03
    xf = x.float() / 255
    torch.testing.assert_close(y[~gray], xf[~gray], rtol=0, atol=0)
    torch.testing.assert_close(y[gray], TF.rgb_to_grayscale(xf[gray], 3), rtol=0, atol=1e-6)


def test_blur_only_reduces_variance():
    x = rand_u8(1000, 3, 16)
    y = augment_batch(x, only(crop_size=16, blur_p=0.5), ZERO, ONE, gen())
    xf = x.float() / 255
    var_in, var_out = xf.var(dim=(2, 3)), y.var(dim=(2, 3))
    assert (var_out <= var_in + 1e-6).all()
    untouched = (y == xf).flatten(1).all(1)
    assert abs(untouched.double().mean().item() - 0.5) < 0.05
    # sigma ~ U[0.1, 2]: tiny sigmas change almost nothing, large ones a lot
    drop = (var_out / var_in)[~untouched].mean(1)
    assert drop.min() < 0.3 and drop.mean() < 0.8


def test_solarize():
    x = rand_u8(500, 3, 8)
    xf = x.float() / 255
    y = augment_batch(x, only(crop_size=8, solarize_p=1.0, solarize_threshold=0.5), ZERO, ONE, gen())
    assert torch.equal(y, torch.where(xf >= 0.5, 1 - xf, xf))
    y = augment_batch(x, only(crop_size=8, solarize_p=0.2), ZERO, ONE, gen())
    hit = (y != xf).flatten(1).any(1)
    assert abs(hit.double().mean().item() - 0.2) < 0.05
    torch.testing.assert_close(solarize(xf[:4], 0.3), TF.solarize(xf[:4], 0.3), rtol=0, atol=0)


def _colourful(b: int = 8, size: int = 12, seed: int = 0) -> torch.Tensor:
    x = torch.rand(b, 3, size, size, generator=gen(seed))
    x[0, :, :2] = 0.5  # grays (hue undefined)
    x[1, 0], x[1, 1] = 1.0, 1.0  # ties between channels
    x[2, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0])
    x[2, :, 0, 1] = torch.tensor([1.0, 1.0, 1.0])
    return x


def test_hsv_round_trip_and_zero_hue():
    x = _colourful()
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, rtol=0, atol=1e-5)
    hsv = rgb_to_hsv(x)
    assert hsv.min() >= 0 and hsv.max() <= 1
    assert torch.equal(adjust_hue(x, torch.zeros(8)), x)
    torch.testing.assert_close(adjust_hue(adjust_hue(x, torch.full((8,), 0.3)), torch.full((8,), -0.3)), x, rtol=0, atol=1e-5)


def test_per_sample_ops_match_torchvision():
    x = _colourful(8)
    factors = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0, 1.2, 1.5, 1.8])
    shifts = torch.tensor([-0.5, -0.3, -0.1, 0.0, 0.05, 0.2, 0.4, 0.5])
    for ours, theirs, par in (
        (adjust_brightness, TF.adjust_brightness, factors),
        (adjust_contrast, TF.adjust_contrast, factors),
        (adjust_saturation, TF.adjust_saturation, factors),
        (adjust_hue, TF.adjust_hue, shifts),
    ):
        got = ours(x, par)
        for i in range(8):
            torch.testing.assert_close(got[i], theirs(x[i], par[i].item()), rtol=0, atol=1e-5, msg=theirs.__name__)
        # one value for the whole batch: torchvision on the batch
        torch.testing.assert_close(ours(x, par[5].expand(8)), theirs(x, par[5].item()), rtol=0, atol=1e-5)
    torch.testing.assert_close(rgb_to_grayscale(x), TF.rgb_to_grayscale(x), rtol=0, atol=1e-6)
    g = x[:, :1]  # 1 channel: brightness/contrast apply, saturation/hue are no-ops
    torch.testing.assert_close(adjust_contrast(g, factors), torch.stack([TF.adjust_contrast(g[i], f.item()) for i, f in enumerate(factors)]))
    assert torch.equal(adjust_saturation(g, factors), g) and torch.equal(adjust_hue(g, shifts), g)


def test_color_jitter_order_matches_sequential_torchvision():
    x = _colourful(24, 6, seed=1)
    g = gen(5)
    factors = torch.rand(24, 4, generator=g) * 1.2 + 0.4
    factors[:, 3] = torch.rand(24, generator=g) * 0.4 - 0.2
    order = torch.rand(24, 4, generator=g).argsort(1)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)

    def reference(img, f, perm):
        for op in perm.tolist():
            img = fns[op](img, f[op].item())
        return img

    got = color_jitter(x, factors, order)
    ref = torch.stack([reference(x[i], factors[i], order[i]) for i in range(24)])
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
    fixed = color_jitter(x, factors, None)
    ref = torch.stack([reference(x[i], factors[i], torch.arange(4)) for i in range(24)])
    torch.testing.assert_close(fixed, ref, rtol=0, atol=2e-5)
    no_hue = factors.clone()
    no_hue[:, 3] = 0
    torch.testing.assert_close(color_jitter(x, no_hue, order, hue=False), color_jitter(x, no_hue, order), rtol=0, atol=1e-6)
    # identity parameters leave samples bit-identical
    ident = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(24, 4)
    assert torch.equal(color_jitter(x, ident, order), x)
    # 1 channel: saturation and hue are skipped, brightness and contrast keep their order
    g1 = x[:, :1]
    ref = torch.stack([reference(g1[i], factors[i], order[i]) for i in range(24)])
    torch.testing.assert_close(color_jitter(g1, factors, order), ref, rtol=0, atol=2e-5)
    ref = torch.stack([reference(g1[i], factors[i], torch.arange(4)) for i in range(24)])
    torch.testing.assert_close(color_jitter(g1, factors, None), ref, rtol=0, atol=2e-5)


def test_jitter_order_is_random_per_sample():
    from relssl.augment.pipeline import _photometric_params

    u = torch.rand(8000, N_UNIFORMS, generator=gen())
    order = _photometric_params(RECIPES["strong"], u)["order"]
    assert (order.sort(1).values == torch.arange(4)).all()
    first = torch.bincount(order[:, 0], minlength=4).double() / 8000
    assert (first - 0.25).abs().max() < 0.03
    fixed = _photometric_params(recipe("strong", jitter_order="fixed"), u)["order"]
    assert (fixed == torch.arange(4)).all()


def test_gaussian_blur_matches_torchvision():
    x = torch.rand(4, 3, 20, 20, generator=gen())
    sig = torch.tensor([0.1, 0.7, 1.3, 2.0])
    for k in (3, 9, 13):
        got = gaussian_blur(x, sig, k)
        for i in range(4):
            torch.testing.assert_close(got[i], TF.gaussian_blur(x[i], [k, k], [sig[i].item()] * 2), rtol=0, atol=1e-5)
    # a per-sample radius truncates the kernel: same as the smaller kernel
    got = gaussian_blur(x, sig, 13, radius=torch.tensor([6, 1, 4, 6]))
    for i, k in enumerate((13, 3, 9, 13)):
        torch.testing.assert_close(got[i], TF.gaussian_blur(x[i], [k, k], [sig[i].item()] * 2), rtol=0, atol=1e-5)
    mask = torch.tensor([True, False, True, False])
    got = gaussian_blur(x, sig, 5, mask=mask)
    assert torch.equal(got[~mask], x[~mask])


def test_random_grayscale_op():
    x = _colourful(4)
    m = torch.tensor([True, False, False, True])
    y = random_grayscale(x, m)
    assert torch.equal(y[~m], x[~m])
    torch.testing.assert_close(y[m], TF.rgb_to_grayscale(x[m], 3), rtol=0, atol=1e-6)


def test_one_channel_strong_pipeline():
    x = rand_u8(64, 1, 28)
    y = augment_batch(x, RECIPES["strong"], [0.286], [0.353], gen())
    assert y.shape == (64, 1, 32, 32) and torch.isfinite(y).all()
    views = make_views(x, [RECIPES["byol_a"], RECIPES["byol_b"]], [0.286], [0.353], gen())
    assert [v.shape for v in views] == [(64, 1, 32, 32)] * 2


def test_full_pipeline_statistics_strong():
    """Mean and spread of the strong recipe on constant-colour images are sane: jitter
    moves the colour, blur/crop of a constant image change nothing."""
    x = torch.empty(3000, 3, 8, 8, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 200, 100, 50
    y = augment_batch(x, recipe("strong", crop_size=8), ZERO, ONE, gen())
    per_sample = y.flatten(2)
    assert (per_sample.std(-1) < 1e-5).all()  # still constant images
    colour = per_sample[:, :, 0]
    unchanged = (colour - torch.tensor([200, 100, 50]) / 255).abs().amax(1) < 1e-6
    # untouched iff no jitter (p 0.2, factors never exactly 1) and no grayscale (p 0.2)
    assert abs(unchanged.double().mean().item() - 0.2 * 0.8) < 0.03


# ----------------------------------------------------------------- validation


def test_presets():
    s = RECIPES["strong"]
    assert (s.crop_scale, s.flip_p, s.jitter_p, s.grayscale_p, s.blur_p) == ((0.2, 1.0), 0.5, 0.8, 0.2, 0.5)
    assert (s.brightness, s.contrast, s.saturation, s.hue, s.blur_sigma) == (0.4, 0.4, 0.4, 0.1, (0.1, 2.0))
    w = RECIPES["weak"]
    assert w.crop_scale == (0.2, 1.0) and w.flip_p == 0.5 and w.jitter_p == w.grayscale_p == w.blur_p == w.solarize_p == 0
    c = RECIPES["simclr"]
    assert c.crop_scale == (0.08, 1.0) and (c.brightness, c.contrast, c.saturation, c.hue, c.jitter_p) == (0.8, 0.8, 0.8, 0.2, 0.8)
    a, b = RECIPES["byol_a"], RECIPES["byol_b"]
    assert (a.blur_p, b.blur_p, a.solarize_p, b.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert (a.brightness, a.contrast, a.saturation, a.hue) == (0.4, 0.4, 0.2, 0.1) == (b.brightness, b.contrast, b.saturation, b.hue)
    assert s.kernel_size() == 13 and recipe("strong", crop_size=8).kernel_size() == 7
    assert recipe("strong", blur_kernel=23, crop_size=96).kernel_size() == 23


def test_recipe_builder_and_validation():
    r = recipe("weak", flip_p=0.9, crop_size=64)
    assert r.flip_p == 0.9 and r.crop_size == 64 and r.jitter_p == 0
    assert recipe({"preset": "byol_b", "crop_scale": [0.3, 0.9]}).crop_scale == (0.3, 0.9)
    assert recipe({"hue": 0.0}) == ViewRecipe(hue=0.0)
    assert recipe(r, flip_p=0.1).flip_p == 0.1
    with pytest.raises(ValueError, match="flip_pp.*allowed.*flip_p"):
        recipe("strong", flip_pp=0.5)
    with pytest.raises(ValueError, match="unknown augmentation preset 'strongest'.*simclr"):
        recipe("strongest")
    bad = [
        (dict(flip_p=1.5), "flip_p"),
        (dict(hue=0.6), "hue"),
        (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
        (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
        (dict(crop_ratio=(2.0, 1.0)), "crop_ratio"),
        (dict(blur_kernel=4), "blur_kernel"),
        (dict(blur_sigma=(0.0, 1.0)), "blur_sigma"),
        (dict(crop_size=0), "crop_size"),
        (dict(jitter_order="shuffled"), "jitter_order"),
        (dict(brightness=-0.1), "brightness"),
        (dict(solarize_threshold=2), "solarize_threshold"),
        (dict(crop_scale=0.5), "crop_scale"),
    ]
    for kw, field in bad:
        with pytest.raises(ValueError, match=field) as e:
            ViewRecipe(**kw)
        assert "\n" not in str(e.value)


def test_input_validation():
    x = rand_u8(2, 3, 8)
    with pytest.raises(ValueError, match="mean"):
        augment_batch(x, RECIPES["weak"], (0.5, 0.5), ONE, gen())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        augment_batch(rand_u8(2, 4, 8), RECIPES["weak"], ZERO, ONE, gen())
    with pytest.raises(ValueError, match="std must be positive"):
        eval_batch(x, None, ZERO, (1.0, 0.0, 1.0))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator"):
            augment_batch(x.cuda(), RECIPES["weak"], ZERO, ONE, gen())
    assert augment_batch(x, "weak", ZERO, ONE, None).shape == (2, 3, 32, 32)  # global RNG, preset by name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_ops_and_is_deterministic():
    x = rand_u8(64, 3, 32).cuda()
    a = augment_batch(x, RECIPES["strong"], ZERO, ONE, torch.Generator("cuda").manual_seed(0))
    b = augment_batch(x, RECIPES["strong"], ZERO, ONE, torch.Generator("cuda").manual_seed(0))
    assert a.is_cuda and torch.equal(a, b)
    xf = torch.rand(8, 3, 16, 16)
    f = torch.rand(8, 4) + 0.5
    f[:, 3] -= 0.8
    order = torch.rand(8, 4).argsort(1)
    torch.testing.assert_close(color_jitter(xf.cuda(), f.cuda(), order.cuda()).cpu(), color_jitter(xf, f, order), rtol=0, atol=1e-5)
    torch.testing.assert_close(gaussian_blur(xf.cuda(), f[:, 0].cuda(), 7).cpu(), gaussian_blur(xf, f[:, 0], 7), rtol=0, atol=2e-3)
