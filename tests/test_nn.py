"""Tests for relssl.nn: backbones, SplitBatchNorm, heads, EMA, FeatureQueue, gathers, Shuffle-BN."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relssl.nn import (
    BACKBONES,
    FeatureQueue,
    SplitBatchNorm2d,
    build_backbone,
    byol_head,
    convert_to_split_bn,
    ema_update,
    gather_no_grad,
    gather_with_grad,
    load_weights,
    make_teacher,
    mlp,
    moco_head,
    momentum_at,
    nnclr_projector,
    rank,
    shuffle_forward,
    simclr_head,
    wcl_head,
    world_size,
)

# --------------------------------------------------------------------------- backbones


_SHAPE_CASES = [
    (name, c, hw)
    for name in BACKBONES
    for c in (1, 3)
    for hw in (28, 32)
    # the larger ResNets differ from resnet18 only in depth: one shape each keeps the CPU run short
    if name not in ("resnet34", "resnet50") or (c, hw) == (3, 32)
]


@pytest.mark.parametrize("name,in_channels,hw", _SHAPE_CASES)
def test_backbone_output_shape(name, in_channels, hw):
    torch.manual_seed(0)
    net, dim = build_backbone(name, in_channels=in_channels)
    expected = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "convnet": 256, "convnet_tiny": 64,
                "convnet_grid": 256 * 2 * 2,  # a 2x2 grid of the last 256 channels
                "convnet_grid_small": 128 * 2 * 2}
    assert dim == expected[name]
    batch = 2 if name.startswith("resnet") else 4
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(batch, in_channels, hw, hw))
    assert out.shape == (batch, dim)
    assert torch.isfinite(out).all()


def test_conv_net_widths_and_grid_come_from_backbone_kwargs():
    net, dim = build_backbone("convnet_grid", in_channels=1, kwargs={"widths": [4, 8, 16]})
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16] and convs[0].in_channels == 1
    assert dim == 16 * 2 * 2  # convnet_grid keeps its 2x2 grid unless told otherwise
    net, dim = build_backbone("convnet", in_channels=3, kwargs={"grid": 3})
    assert dim == 256 * 9 and net(torch.randn(2, 3, 28, 28)).shape == (2, dim)


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": []}, "widths must be a list of positive integers"),
    ({"widths": [8, 0]}, "widths must be a list of positive integers"),
    ({"widths": 16}, "widths must be a list of positive integers"),
    ({"grid": 0}, "grid must be an integer >= 1"),
    ({"grid": True}, "grid must be an integer >= 1"),
    ({"depth": 4}, "takes backbone.kwargs widths and grid only"),
])
def test_bad_conv_net_kwargs_fail_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        build_backbone("convnet", in_channels=1, kwargs=kwargs)
    assert "\n" not in str(err.value)


def test_unknown_backbone_lists_names():
    with pytest.raises(ValueError) as err:
        build_backbone("vit_huge")
    for name in BACKBONES:
        assert name in str(err.value)


def test_cifar_stem_properties():
    net, dim = build_backbone("resnet18", in_channels=1)
    assert dim == 512
    c = net.conv1
    assert c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1)
    assert c.bias is None and c.in_channels == 1 and c.out_channels == 64
    assert isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.fc, nn.Identity)

    net, _ = build_backbone("resnet18", maxpool=True)
    assert isinstance(net.maxpool, nn.MaxPool2d)

    net, _ = build_backbone("resnet18", cifar_stem=False, maxpool=True)
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, nn.MaxPool2d)


def test_backbone_bn_splits_and_state_dict_is_torchvision_compatible():
    import torchvision

    net, _ = build_backbone("resnet18", bn_splits=4)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 4 for m in bns)
    # the ImageNet-stem resnet18 state dict loads into a plain torchvision resnet18 (except fc)
    net, _ = build_backbone("resnet18", cifar_stem=False, maxpool=True, bn_splits=2)
    tv = torchvision.models.resnet18(weights=None)
    missing, unexpected = tv.load_state_dict(net.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_load_weights_torchvision_layout(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    net, _ = build_backbone("resnet18", cifar_stem=False, maxpool=True)
    load_weights(net, path, head="fc")
    assert torch.equal(net.conv1.weight, tv.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    cifar, _ = build_backbone("resnet18")
    with pytest.raises(ValueError, match="conv1.weight"):
        load_weights(cifar, path, head="fc")


def test_convnet_tiny_trains_on_cpu():
    net, dim = build_backbone("convnet_tiny", in_channels=1, bn_splits=2)
    x = torch.randn(4, 1, 28, 28)
    out = net(x)
    out.sum().backward()
    assert out.shape == (4, dim)
    assert all(p.grad is not None for p in net.parameters())


# --------------------------------------------------------------------------- SplitBatchNorm


def _random_bn(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


@pytest.mark.parametrize("momentum", [0.1, None])
def test_split_bn_train_matches_bn_per_split(momentum):
    torch.manual_seed(0)
    s, n, c = 4, 12, 3
    base = _random_bn(c)
    base.momentum = momentum
    split = convert_to_split_bn(copy.deepcopy(base), s)
    assert isinstance(split, SplitBatchNorm2d) and split.num_splits == s
    x = torch.randn(n, c, 5, 5) * 3 + 1
    out = split(x)

    refs = [copy.deepcopy(base) for _ in range(s)]
    expected = torch.empty_like(x)
    for g in range(s):  # group g = samples g, g+S, g+2S, ... (MoCo demo layout)
        expected[g::s] = refs[g](x[g::s])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in refs]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in refs]).mean(0))
    assert int(split.num_batches_tracked) == 1

    # gradients flow to the shared affine parameters
    x.requires_grad_(True)
    split(x).square().sum().backward()
    assert split.weight.grad is not None and x.grad is not None


def test_split_bn_eval_is_plain_bn_and_state_dict_compatible():
    base = _random_bn(3, seed=1)
    split = convert_to_split_bn(copy.deepcopy(base), 2).eval()
    base.eval()
    x = torch.randn(6, 3, 4, 4)
    torch.testing.assert_close(split(x), base(x))
    assert set(split.state_dict()) == set(base.state_dict())
    fresh = nn.BatchNorm2d(3)
    fresh.load_state_dict(split.state_dict())  # strict
    torch.testing.assert_close(fresh.eval()(x), base(x))


def test_split_bn_indivisible_batch_raises():
    bn = SplitBatchNorm2d(3, num_splits=4)
    with pytest.raises(ValueError, match=r"10.*4"):
        bn(torch.randn(10, 3, 2, 2))
    bn.eval()
    assert bn(torch.randn(10, 3, 2, 2)).shape == (10, 3, 2, 2)  # eval: plain BN


def test_split_bn_channels_last():
    bn = SplitBatchNorm2d(3, num_splits=2)
    x = torch.randn(4, 3, 5, 5)
    ref = copy.deepcopy(bn)(x)
    out = bn(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref)


# --------------------------------------------------------------------------- heads


def test_mlp_structure():
    head = mlp([16, 32, 32, 8], hidden_bn=True, last_bn=True, last_bn_affine=False, bias=False)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert head[0].in_features == 16 and head[0].out_features == 32 and head[0].bias is None
    assert head[-1].affine is False and head[-2].out_features == 8
    assert head(torch.randn(4, 16)).shape == (4, 8)

    plain = mlp([16, 8])
    assert [type(m) for m in plain] == [nn.Linear] and plain[0].bias is not None
    with pytest.raises(ValueError):
        mlp([16])


def test_head_presets():
    assert [type(m) for m in moco_head(512)] == [nn.Linear, nn.ReLU, nn.Linear]
    h = moco_head(512)
    assert (h[0].in_features, h[0].out_features, h[2].out_features) == (512, 2048, 128)
    h = simclr_head(512)
    assert [type(m) for m in h] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert h[-1].out_features == 128
    h = byol_head(512)
    assert [type(m) for m in h] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (h[0].out_features, h[-1].out_features) == (4096, 256)
    h = nnclr_projector(512)
    assert [type(m) for m in h][-2:] == [nn.Linear, nn.BatchNorm1d]
    h = wcl_head(512)
    assert [type(m) for m in h] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]


# --------------------------------------------------------------------------- EMA


def _tiny_net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()


def test_make_teacher_frozen_copy():
    torch.manual_seed(0)
    student = _tiny_net()
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for a, b in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_ema_update_math_and_buffers():
    torch.manual_seed(0)
    student = _tiny_net()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
    # give the student different BN buffers and a step count
    student.train()(torch.randn(8, 3, dtype=torch.float64))
    t0 = [p.clone() for p in teacher.parameters()]
    tb0 = [b.clone() for b in teacher.buffers()]
    m = 0.9
    ema_update(teacher, student, m)
    for t, t_old, s in zip(teacher.parameters(), t0, student.parameters()):
        torch.testing.assert_close(t, m * t_old + (1 - m) * s, rtol=0, atol=1e-12)
    for b, b_old in zip(teacher.buffers(), tb0):  # buffers untouched by default
        assert torch.equal(b, b_old)

    ema_update(teacher, student, m, copy_buffers=True)
    bn_t, bn_s = teacher[1], student[1]
    torch.testing.assert_close(bn_t.running_mean, m * tb0[0] + (1 - m) * bn_s.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn_t.running_var, m * tb0[1] + (1 - m) * bn_s.running_var, rtol=0, atol=1e-12)
    assert int(bn_t.num_batches_tracked) == int(bn_s.num_batches_tracked) == 1

    ema_update(teacher, student, 0.0)  # momentum 0 = copy
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s, rtol=0, atol=0)
    with pytest.raises(ValueError):
        ema_update(teacher, student, 1.5)


def test_no_gradient_reaches_teacher():
    torch.manual_seed(0)
    student = _tiny_net()
    teacher = make_teacher(student)
    x = torch.randn(8, 3, dtype=torch.float64)
    loss = (student(x) - teacher(x)).square().sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    ema_update(teacher, student, 0.5)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_momentum_at():
    assert momentum_at(0.99, 1.0, 0.0) == 0.99
    assert momentum_at(0.99, 1.0, 0.7, "constant") == 0.99
    assert momentum_at(0.99, 1.0, 0.0, "cosine") == pytest.approx(0.99, abs=1e-15)
    assert momentum_at(0.99, 1.0, 0.5, "cosine") == pytest.approx(0.995, abs=1e-15)
    assert momentum_at(0.99, 1.0, 1.0, "cosine") == pytest.approx(1.0, abs=1e-15)
    # BYOL formula tau = 1 - (1 - base)(cos(pi k / K) + 1) / 2
    assert momentum_at(0.996, 1.0, 0.3, "cosine") == pytest.approx(
        1 - (1 - 0.996) * (math.cos(math.pi * 0.3) + 1) / 2
    )
    for bad in [dict(base=1.2, final=1.0, progress=0.1), dict(base=0.9, final=1.0, progress=1.5)]:
        with pytest.raises(ValueError):
            momentum_at(schedule="cosine", **bad)
    with pytest.raises(ValueError, match="cosine"):
        momentum_at(0.9, 1.0, 0.1, "linear")


# --------------------------------------------------------------------------- FeatureQueue


def _unit(n, d, start=0):
    """n distinct rows, each a scaled one-hot-ish vector (so normalisation is visible)."""
    x = torch.zeros(n, d)
    for i in range(n):
        x[i, (start + i) % d] = 2.0 + i
        x[i, (start + i + 1) % d] = 1.0
    return x


def test_queue_init():
    q = FeatureQueue(7, 4)
    assert q.features.shape == (7, 4) and q.features.dtype == torch.float32
    torch.testing.assert_close(q.features.norm(dim=1), torch.ones(7))
    for t in (q.index, q.labels, q.step):
        assert t.dtype == torch.long and torch.equal(t, torch.full((7,), -1))
    assert len(q) == 0 and int(q.ptr) == 0 and bool(q)
    assert torch.equal(FeatureQueue(3, 2, init="zeros").features, torch.zeros(3, 2))
    with pytest.raises(ValueError):
        FeatureQueue(3, 2, init="ones")


def test_queue_fifo_wraparound_exact_contents():
    q = FeatureQueue(5, 4)
    batches = [torch.randn(3, 4) for _ in range(3)]
    normed = [F.normalize(b, dim=1) for b in batches]

    q.enqueue(batches[0], index=torch.tensor([0, 1, 2]), labels=torch.tensor([5, 6, 7]), step=10)
    assert int(q.ptr) == 3 and len(q) == 3
    torch.testing.assert_close(q.features[:3], normed[0])
    assert q.index.tolist() == [0, 1, 2, -1, -1]
    assert q.labels.tolist() == [5, 6, 7, -1, -1]
    assert q.step.tolist() == [10, 10, 10, -1, -1]
    assert q.valid_mask().tolist() == [True, True, True, False, False]

    # straddles the end: rows 3, 4 then 0
    q.enqueue(batches[1], index=torch.tensor([3, 4, 5]), labels=torch.tensor([8, 9, 10]), step=11)
    assert int(q.ptr) == 1 and len(q) == 5
    torch.testing.assert_close(q.features[3:5], normed[1][:2])
    torch.testing.assert_close(q.features[0], normed[1][2])
    torch.testing.assert_close(q.features[1:3], normed[0][1:3])
    assert q.index.tolist() == [5, 1, 2, 3, 4]
    assert q.labels.tolist() == [10, 6, 7, 8, 9]
    assert q.step.tolist() == [11, 10, 10, 11, 11]
    assert q.age(12).tolist() == [1, 2, 2, 1, 1]

    q.enqueue(batches[2], index=torch.tensor([6, 7, 8]), step=12)  # labels unknown
    assert int(q.ptr) == 4
    torch.testing.assert_close(q.features[1:4], normed[2])
    assert q.index.tolist() == [5, 6, 7, 8, 4]
    assert q.labels.tolist() == [10, -1, -1, -1, 9]
    torch.testing.assert_close(q.features.norm(dim=1), torch.ones(5))
    assert int(q.count) == 9 and int(q.calls) == 3


def test_queue_batch_larger_than_queue_keeps_last_rows():
    q = FeatureQueue(4, 3)
    q.enqueue(torch.randn(2, 3), index=torch.tensor([100, 101]))  # ptr -> 2
    x = torch.randn(7, 3)
    q.enqueue(x, index=torch.arange(7))
    # row j of the batch goes to (2 + j) % 4; rows 3..6 survive at positions 1, 2, 3, 0
    assert q.index.tolist() == [6, 3, 4, 5]
    torch.testing.assert_close(q.features, F.normalize(x, dim=1)[[6, 3, 4, 5]])
    assert int(q.ptr) == (2 + 7) % 4
    # default step = number of previous enqueue calls
    assert q.step.tolist() == [1, 1, 1, 1] and q.age().tolist() == [1, 1, 1, 1]


def test_queue_any_size_and_dtype():
    q = FeatureQueue(10, 4, dtype=torch.float64)
    for i in range(7):
        q.enqueue(torch.randn(3, 4), index=torch.arange(3) + 3 * i)
    # 21 rows written into 10 slots: slot p holds the last row j with j % 10 == p
    assert q.index.tolist() == [20, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert q.features.dtype == torch.float64 and int(q.ptr) == 1


def test_queue_enqueue_detaches_and_validates():
    q = FeatureQueue(4, 3)
    x = torch.randn(2, 3, requires_grad=True)
    q.enqueue(x * 2)
    assert not q.features.requires_grad
    with pytest.raises(ValueError):
        q.enqueue(torch.randn(2, 5))
    with pytest.raises(ValueError):
        q.enqueue(torch.randn(2, 3), index=torch.arange(3))


def test_queue_state_dict_round_trip():
    torch.manual_seed(0)
    q = FeatureQueue(5, 4)
    q.enqueue(torch.randn(3, 4), index=torch.arange(3), labels=torch.tensor([1, 2, 3]), step=4)
    q.enqueue(torch.randn(3, 4), index=torch.arange(3, 6), step=5)
    sd = q.state_dict()
    assert {"bank", "bank_index", "bank_step", "bank_label", "ptr", "count", "calls"} <= set(sd)
    fresh = FeatureQueue(5, 4)
    fresh.load_state_dict(sd)
    for name, buf in q.named_buffers():
        assert torch.equal(buf, dict(fresh.named_buffers())[name]), name
    # and it continues identically
    x = torch.randn(2, 4)
    q.enqueue(x)
    fresh.enqueue(x)
    for name, buf in q.named_buffers():
        assert torch.equal(buf, dict(fresh.named_buffers())[name]), name
    assert int(fresh.ptr) == 3


def test_queue_topk_matches_brute_force():
    torch.manual_seed(0)
    q = FeatureQueue(50, 8)
    q.enqueue(torch.randn(50, 8), index=torch.arange(50))
    query = torch.randn(6, 8, requires_grad=True)
    sims, idx = q.topk(query, 5)
    ref = F.normalize(query.detach(), dim=1) @ F.normalize(q.features, dim=1).T
    ref_sims, ref_idx = ref.sort(dim=1, descending=True)
    assert torch.equal(idx, ref_idx[:, :5])
    torch.testing.assert_close(sims.detach(), ref_sims[:, :5])
    sims.sum().backward()  # gradient reaches the query, not the queue
    assert query.grad is not None and not q.features.requires_grad

    rows, nn_idx = q.nearest(query)
    assert torch.equal(nn_idx, ref_idx[:, 0]) and torch.equal(rows, q.features[nn_idx])
    with pytest.raises(ValueError):
        q.topk(query, 51)


def test_queue_topk_exclude_self_and_valid_only():
    q = FeatureQueue(6, 4)
    feats = _unit(3, 4)
    q.enqueue(feats, index=torch.tensor([10, 11, 12]))
    # the query is exactly row 0 (sample 10): excluding sample 10 must skip it
    _, idx = q.topk(feats[:1], 1)
    assert idx.item() == 0
    _, idx = q.topk(feats[:1], 1, exclude_index=torch.tensor([10]))
    assert idx.item() != 0
    sims, idx = q.topk(feats[:1], 4, valid_only=True)
    assert set(idx[0, :3].tolist()) == {0, 1, 2} and sims[0, 3] == float("-inf")


# --------------------------------------------------------------------------- distributed helpers


def test_gather_identity_without_distributed():
    assert world_size() == 1 and rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    y = gather_with_grad(x)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    z = gather_no_grad(x)
    assert torch.equal(z, x) and not z.requires_grad


# --------------------------------------------------------------------------- Shuffle-BN


def test_shuffle_forward_per_sample_module_unchanged_and_reproducible():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(16, 5)
    torch.testing.assert_close(shuffle_forward(lin, x, torch.Generator().manual_seed(1)), lin(x))

    # with batch statistics the output changes with the permutation, reproducibly under a seed
    bn = SplitBatchNorm2d(2, num_splits=4)
    xi = torch.randn(16, 2, 3, 3)
    a = shuffle_forward(copy.deepcopy(bn), xi, torch.Generator().manual_seed(3))
    b = shuffle_forward(copy.deepcopy(bn), xi, torch.Generator().manual_seed(3))
    c = shuffle_forward(copy.deepcopy(bn), xi, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.manual_seed(5)
    d = shuffle_forward(lin, x)  # default RNG
    torch.testing.assert_close(d, lin(x))


# --------------------------------------------------------------------------- 2-process gloo


def _dist_worker(rank_: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_, world_size=world)
    try:
        # queue: size 5, each rank writes 3 rows -> 6 gathered rows wrap around
        q = FeatureQueue(5, 4)
        feats = torch.full((3, 4), float(rank_ + 1)) + torch.arange(3.0).view(3, 1) * torch.eye(4)[0]
        q.enqueue(feats, index=torch.arange(3) + 10 * rank_, labels=torch.full((3,), rank_), step=7)
        # gather_with_grad: d/dx_r of sum over ranks of (r+1) * sum(gathered) = sum_j (j+1)
        x = torch.full((2, 3), float(rank_), requires_grad=True)
        g = gather_with_grad(x)
        (g.sum() * (rank_ + 1)).backward()
        # shuffle_forward over the global batch equals the plain forward for a per-sample module
        torch.manual_seed(0)
        lin = nn.Linear(4, 2)
        xs = torch.randn(4, 4) + rank_
        sh = shuffle_forward(lin, xs, torch.Generator().manual_seed(rank_))
        torch.save(
            {
                "index": q.index.clone(),
                "labels": q.labels.clone(),
                "features": q.features.clone(),
                "ptr": int(q.ptr),
                "gathered": g.detach().clone(),
                "grad": x.grad.clone(),
                "shuffle_err": (sh - lin(xs)).abs().max().item(),
            },
            os.path.join(out_dir, f"rank{rank_}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_gather_queue(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in res:
        # gathered order [rank0 rows 0,1,2, rank1 rows 0,1,2] written from ptr 0 into 5 slots:
        # rank1's last row wraps to slot 0
        assert r["index"].tolist() == [12, 1, 2, 10, 11]
        assert r["labels"].tolist() == [1, 0, 0, 1, 1]
        assert r["ptr"] == 1
        assert r["gathered"].tolist() == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
        torch.testing.assert_close(r["grad"], torch.full((2, 3), 3.0))  # 1 + 2
        assert r["shuffle_err"] < 1e-5
    assert torch.equal(res[0]["features"], res[1]["features"])
