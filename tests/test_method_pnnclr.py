"""pNNCLR method: queue update between the halves, hand-computed loss, extensions under a seed,
smooth (EMA) weight update, nn_purity, and end-to-end learning."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relssl.config import resolve_recipe
from relssl.config import load_config
from relssl.errors import ConfigError
from relssl.losses import pnnclr_loss, pseudo_nn
from relssl.methods import METHODS, StepInfo
from relssl.methods.pnnclr import PNNCLR


B, IN, FEAT, DIM, K = 6, 12, 16, 8, 32


def make(seed=0, **kw):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(IN, FEAT), nn.BatchNorm1d(FEAT), nn.ReLU())
    cfg = PNNCLR.Config(**{"enc_hidden": 16, "enc_dim": 16, "proj_hidden": 16, "proj_dim": DIM,
                           "pred_hidden": 16, "queue_size": K, **kw})
    m = PNNCLR(backbone, FEAT, cfg)
    g = torch.Generator().manual_seed(2)  # 20 older rows (stale entries of other images)
    m.queue.enqueue(torch.randn(20, DIM, generator=g), index=100 + torch.arange(20),
                    labels=torch.randint(0, 4, (20,), generator=g), step=0)
    return m


def views(seed=1):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(B, IN, generator=g)
    return [x1, x1 + 0.1 * torch.randn(B, IN, generator=g)]


def info(labels=True, seed=None):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return StepInfo(step=7, progress=0.5, index=torch.arange(10, 10 + B),
                    labels=torch.tensor([3, 3, 1, 0, 3, 2]) if labels else None, generator=gen)


def outputs(m, xs):
    with torch.no_grad():
        p1, p2 = m.predictor(m.online(xs[0])), m.predictor(m.online(xs[1]))
        return p1, p2, m.teacher(xs[0]), m.teacher(xs[1])


def reference_call(a, b, support, t, tau):
    """One contrastive call C(a, b; Q) by hand, in float64: four B x B blocks, mean CE over 4B rows."""
    a, b, s = (F.normalize(x.double(), dim=1) for x in (a, b, support))

    def pnn(u):
        return (1 - t) * u + t * s[(u @ s.T).argmax(dim=1)]

    logits = torch.cat([pnn(a) @ b.T, b @ pnn(a).T, pnn(b) @ a.T, a @ pnn(b).T]) / tau
    return F.cross_entropy(logits, torch.arange(a.shape[0]).repeat(4))


def run_step(m, xs, inf):
    """One step; returns the output, the queue before it (Q) and between the halves (Q')."""
    q0, ptr0 = m.queue.features.clone(), int(m.queue.ptr)
    out = m.training_step(xs, inf)
    p1, p2, zt1, zt2 = outputs(m, xs)
    q1 = q0.clone()
    q1[ptr0:ptr0 + B] = F.normalize(p1, dim=1)
    return out, q0, q1, ptr0, (p1, p2, zt1, zt2)


def test_registered_structure_and_recipes():
    assert METHODS["pnnclr"] is PNNCLR
    m = make()
    head = m.online.head
    assert [type(x) for x in head] == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear] and head[0].bias is None
    for mod in (m.online.projector, m.predictor):
        assert not any(isinstance(x, nn.BatchNorm1d) for x in mod)
    assert [n for n, _ in m.teacher.named_children()] == ["backbone", "head", "projector"]  # no target predictor
    assert not any(p.requires_grad for p in m.teacher.parameters())
    for ds in ("fashion_mnist", "cifar10", "cifar100", "stl10", "tiny_imagenet", "medmnist"):
        cfg = load_config(resolve_recipe(f"{ds}/pnnclr"))
        assert cfg.method["name"] == "pnnclr" and cfg.backbone.weights is None
        assert cfg.method["t"] == 0.95 and cfg.method["momentum"] == 0.99 and cfg.method["reduction"] == "mean"
        assert cfg.data.crop_size == (64 if ds in ("stl10", "tiny_imagenet") else 32)


@pytest.mark.parametrize("override, message", [
    (["method.t_min=0.99"], "method.t_min must be null or in"),
    (["method.topk=20000"], "method.topk must be <= method.queue_size"),
    (["method.reduction=max"], "method.reduction must be one of mean, sum"),
    (["method.noise_std=-1"], "method.noise_std must be >= 0"),
    (["method.t=1.5"], "method.t must be in"),
])
def test_bad_options(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(resolve_recipe("fashion_mnist/pnnclr"), override)


def test_queue_updated_between_halves_and_loss_by_hand():
    m, xs, inf = make(), views(), info()
    out, q0, q1, ptr0, (p1, p2, zt1, zt2) = run_step(m, xs, inf)
    # precondition: half 2's search does find rows written by half 1 (n(p1)), so the order matters
    found = (F.normalize(torch.cat([p2, zt1]), dim=1) @ q1.T).argmax(1)
    assert ((found >= ptr0) & (found < ptr0 + B)).any()
    # the loss is 0.5 C(p1, zt2; Q) + 0.5 C(p2, zt1; Q'), Q' = Q with n(p1) written
    expected = 0.5 * pnnclr_loss(p1, zt2, q0) + 0.5 * pnnclr_loss(p2, zt1, q1)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    by_hand = 0.5 * reference_call(p1, zt2, q0, 0.95, 0.1) + 0.5 * reference_call(p2, zt1, q1, 0.95, 0.1)
    torch.testing.assert_close(out["loss"].double(), by_hand, rtol=1e-5, atol=1e-6)
    # without the update between the halves the value would differ
    stale = 0.5 * pnnclr_loss(p1, zt2, q0) + 0.5 * pnnclr_loss(p2, zt1, q0)
    assert not torch.allclose(stale, expected)
    # after the step the queue holds n(p1) then n(p2), with indices, labels and step
    rows = torch.arange(ptr0, ptr0 + 2 * B)
    torch.testing.assert_close(m.queue.features[rows], F.normalize(torch.cat([p1, p2]), dim=1))
    assert torch.equal(m.queue.index[rows], torch.cat([inf.index, inf.index]))
    assert torch.equal(m.queue.labels[rows], torch.cat([inf.labels, inf.labels]))
    assert torch.equal(m.queue.step[rows], torch.full((2 * B,), 7))
    assert int(m.queue.ptr) == (ptr0 + 2 * B) % K and int(m.queue.count) == 20 + 2 * B
    # gradient: online encoder and predictor get one, the EMA target none
    out["loss"].backward()
    assert m.predictor[0].weight.grad.abs().sum() > 0 and m.online.backbone[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teacher.parameters())


def test_t1_is_plain_nearest_neighbour():
    m, xs, inf = make(t=1.0), views(), info()
    q = F.normalize(torch.randn(5, DIM), dim=1)
    torch.testing.assert_close(pseudo_nn(q, m.queue.features, t=1.0),
                               m.queue.features[(q @ m.queue.features.T).argmax(1)])
    ref = copy.deepcopy(m)
    out, q0, q1, _, (p1, p2, zt1, zt2) = run_step(m, xs, inf)
    by_hand = 0.5 * reference_call(p1, zt2, q0, 1.0, 0.1) + 0.5 * reference_call(p2, zt1, q1, 1.0, 0.1)
    torch.testing.assert_close(out["loss"].double(), by_hand, rtol=1e-5, atol=1e-6)
    ref.cfg.t = 0.95
    assert not torch.allclose(ref.training_step(xs, info())["loss"], out["loss"])


def test_reduction_sum_is_4b_times_mean():
    m_mean = make()
    m_sum = copy.deepcopy(m_mean)
    m_sum.cfg.reduction = "sum"
    lm = m_mean.training_step(views(), info())["loss"]
    ls = m_sum.training_step(views(), info())["loss"]
    torch.testing.assert_close(ls, 4 * B * lm, rtol=1e-5, atol=1e-5)
    lm.backward()
    ls.backward()
    torch.testing.assert_close(m_sum.predictor[0].weight.grad, 4 * B * m_mean.predictor[0].weight.grad,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("options", [{"noise": True}, {"topk": 3}, {"t_min": 0.5},
                                     {"noise": True, "noise_std": 0.05, "topk": 2, "t_min": 0.8}])
def test_extensions_reproducible_under_seed(options):
    base = make(**options)

    def loss(seed):
        return copy.deepcopy(base).training_step(views(), info(seed=seed))["loss"]

    assert torch.equal(loss(0), loss(0))
    assert not torch.allclose(loss(0), loss(1))
    # the default (official) configuration draws nothing: the seed does not matter
    plain = make()
    assert torch.equal(copy.deepcopy(plain).training_step(views(), info(seed=0))["loss"],
                       copy.deepcopy(plain).training_step(views(), info(seed=1))["loss"])


def test_smooth_weight_update_fixed_rate_with_bn_buffers():
    m = make()
    with torch.no_grad():  # make the online network differ from its target, BN buffers included
        for p in m.online.parameters():
            p.add_(torch.randn_like(p))
        bn = m.online.backbone[1]
        bn.running_mean.add_(2.0)
        bn.running_var.mul_(3.0)
        bn.num_batches_tracked.fill_(5)
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    student = m.online.state_dict()
    m.after_optimizer_step(StepInfo(step=1, progress=0.9))  # the rate does not depend on progress
    after = m.teacher.state_dict()
    assert after.keys() == student.keys()
    for k, v in after.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.99 * before[k] + 0.01 * student[k])
        else:
            assert torch.equal(v, student[k]), k
    assert after["backbone.1.running_mean"].abs().sum() > 0  # the BN statistics moved too


def test_nn_purity_and_self_by_hand():
    m, xs, inf = make(), views(), info()
    labels0, index0 = m.queue.labels.clone(), m.queue.index.clone()
    out, q0, q1, ptr0, (p1, p2, zt1, zt2) = run_step(m, xs, inf)
    labels1, index1 = labels0.clone(), index0.clone()
    labels1[ptr0:ptr0 + B], index1[ptr0:ptr0 + B] = inf.labels, inf.index
    # hard neighbours the pseudo neighbours are built from: n(p1), n(zt2) in Q; n(p2), n(zt1) in Q'
    h1 = (F.normalize(torch.cat([p1, zt2]), dim=1) @ q0.T).argmax(1)
    h2 = (F.normalize(torch.cat([p2, zt1]), dim=1) @ q1.T).argmax(1)
    stored = torch.cat([labels0[h1], labels1[h2]])
    query = inf.labels.repeat(4)
    valid = stored >= 0
    assert valid.any()
    expected = ((stored == query) & valid).sum().item() / valid.sum().item()
    assert out["nn_purity"].item() == pytest.approx(expected)
    stored_index = torch.cat([index0[h1], index1[h2]])
    same = (stored_index == inf.index.repeat(4)) & (stored_index >= 0)  # empty rows (-1) left out
    assert out["nn_self"].item() == pytest.approx(same.sum().item() / (stored_index >= 0).sum().item())
    assert "nn_purity" not in make().training_step(views(), info(labels=False))
