"""NNCLR method: support-set order, exclude_self, nn_purity, and end-to-end learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relssl.config import load_config
from relssl.config import resolve_recipe
from relssl.errors import ConfigError
from relssl.losses import nnclr_loss
from relssl.methods import METHODS, StepInfo
from relssl.methods.nnclr import NNCLR
from relssl.metrics.falseneg import neighbour_metrics


B, IN, FEAT, DIM = 6, 12, 16, 8


def make(seed=0, **kw):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(IN, FEAT), nn.BatchNorm1d(FEAT), nn.ReLU())
    cfg = NNCLR.Config(**{"proj_hidden": 32, "proj_dim": DIM, "pred_hidden": 32, "queue_size": 32, **kw})
    return NNCLR(backbone, FEAT, cfg)


def views(seed=1):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(B, IN, generator=g)
    return [x1, x1 + 0.1 * torch.randn(B, IN, generator=g)]


def info(labels=True, step=7):
    return StepInfo(step=step, progress=0.5, index=torch.arange(10, 10 + B),
                    labels=torch.tensor([3, 3, 1, 0, 3, 2]) if labels else None)


def prefill(m, n=20, label=None, seed=2):
    g = torch.Generator().manual_seed(seed)
    lab = torch.full((n,), label) if label is not None else torch.randint(0, 4, (n,), generator=g)
    m.queue.enqueue(torch.randn(n, DIM, generator=g), index=100 + torch.arange(n), labels=lab, step=0)


def outputs(m, xs):
    with torch.no_grad():
        z1, z2 = m.online(xs[0]), m.online(xs[1])
        return z1, z2, m.predictor(z1), m.predictor(z2)


def reference_loss(nn1, nn2, p1, p2, tau):
    """NNCLR by hand (solo-learn form): rows = neighbours, columns = the other view's predictions."""
    t = torch.arange(nn1.shape[0])
    ce = lambda nn_, p: F.cross_entropy(F.normalize(nn_, dim=1) @ F.normalize(p, dim=1).T / tau, t)  # noqa: E731
    return 0.5 * (ce(nn1, p2) + ce(nn2, p1))


def test_registered_and_recipes_load():
    assert METHODS["nnclr"] is NNCLR and NNCLR.default_views == ("byol_a", "byol_b")
    for ds in ("fashion_mnist", "cifar10", "cifar100", "stl10", "tiny_imagenet", "medmnist"):
        cfg = load_config(resolve_recipe(f"{ds}/nnclr"))
        assert cfg.method["name"] == "nnclr" and cfg.method["exclude_self"] is False
        assert cfg.data.crop_size == (64 if ds in ("stl10", "tiny_imagenet") else 32)
        assert cfg.backbone.maxpool == (ds in ("stl10", "tiny_imagenet"))
    with pytest.raises(ConfigError, match="method.queue_size must be > 0"):
        load_config(resolve_recipe("fashion_mnist/nnclr"), ["method.queue_size=0"])


@pytest.mark.parametrize("symmetrize", [False, True])
def test_lookup_uses_queue_before_step_then_stores_view1(symmetrize):
    m = make(symmetrize=symmetrize)
    prefill(m)
    q0, ptr0 = m.queue.features.clone(), int(m.queue.ptr)
    meta0 = (m.queue.index.clone(), m.queue.labels.clone(), m.queue.step.clone())
    xs, inf = views(), info()
    out = m.training_step(xs, inf)
    z1, z2, p1, p2 = outputs(m, xs)
    # the textbook call on the queue as it was before the step
    expected = nnclr_loss(z1, z2, p1, p2, q0, temperature=0.2, symmetrize=symmetrize)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    # the queue after the step would give another value (view 1 would find itself)
    assert not torch.allclose(nnclr_loss(z1, z2, p1, p2, m.queue.features, 0.2, symmetrize), expected)
    # view 1's normalised projections were written at the pointer, with their metadata
    rows = torch.arange(ptr0, ptr0 + B)
    torch.testing.assert_close(m.queue.features[rows], F.normalize(z1, dim=1))
    assert torch.equal(m.queue.index[rows], inf.index)
    assert torch.equal(m.queue.labels[rows], inf.labels)
    assert torch.equal(m.queue.step[rows], torch.full((B,), 7))
    keep = torch.ones(32, dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(m.queue.features[keep], q0[keep])
    assert all(torch.equal(a[keep], b[keep]) for a, b in zip((m.queue.index, m.queue.labels, m.queue.step), meta0))
    assert int(m.queue.ptr) == ptr0 + B
    # the gradient reaches the online network and the predictor
    out["loss"].backward()
    assert m.predictor[0].weight.grad.abs().sum() > 0 and m.online.backbone[0].weight.grad.abs().sum() > 0


def test_exclude_self_never_picks_own_stale_copy():
    xs, inf = views(), info()
    results = {}
    for exclude in (False, True):
        m = make(exclude_self=exclude)
        prefill(m, n=10)
        z1, z2, p1, p2 = outputs(m, xs)
        # stale copies of this batch's own view-1 projections, stored under the same sample indices
        m.queue.enqueue(z1, index=inf.index, labels=inf.labels, step=3)
        own = torch.arange(10, 10 + B)  # their rows
        _, idx1 = m.neighbours(z1, inf.index)
        _, idx2 = m.neighbours(z2, inf.index)
        if exclude:
            assert not (m.queue.index[idx1] == inf.index).any() and not (m.queue.index[idx2] == inf.index).any()
        else:
            assert torch.equal(idx1, own)  # the textbook search returns the anchor's own copy
        # loss = the hand-computed NNCLR loss with neighbours from a masked brute-force search
        sim1 = F.normalize(z1, dim=1) @ m.queue.features.T
        sim2 = F.normalize(z2, dim=1) @ m.queue.features.T
        if exclude:
            mask = m.queue.index.view(1, -1) == inf.index.view(-1, 1)
            sim1, sim2 = sim1.masked_fill(mask, -math.inf), sim2.masked_fill(mask, -math.inf)
        nn1, nn2 = m.queue.features[sim1.argmax(1)], m.queue.features[sim2.argmax(1)]
        out = m.training_step(xs, inf)
        torch.testing.assert_close(out["loss"], reference_loss(nn1, nn2, p1, p2, 0.2), rtol=1e-5, atol=1e-6)
        results[exclude] = out
    assert results[True]["nn_self"] == 0.0
    assert results[False]["nn_self"] >= 0.5  # all of view 1 at least
    assert not torch.allclose(results[True]["loss"], results[False]["loss"])


def test_neighbour_metrics_by_hand():
    nn_labels = torch.tensor([[0, 1, -1, 2], [0, -1, -1, 1]])
    nn_index = torch.tensor([[5, 6, -1, 9], [5, 7, -1, 8]])
    labels, index = torch.tensor([0, 1, 2, 2]), torch.tensor([5, 6, 7, 8])
    out = neighbour_metrics(nn_labels, nn_index, labels, index)
    # written neighbours: 3 in view 1 (all agree), 2 in view 2 (one agrees) -> 4 / 5
    assert out["nn_purity"].item() == pytest.approx(0.8)
    # self-matches among the neighbours with a known index: 4 of 6 (the empty rows left out)
    assert out["nn_self"].item() == pytest.approx(4 / 6)
    assert math.isnan(neighbour_metrics(torch.full((2, 4), -1), nn_index, labels, None)["nn_purity"].item())
    assert neighbour_metrics(nn_labels, nn_index, None, None) == {}


def test_nn_purity_in_step():
    m = make()
    prefill(m, n=32, label=3)  # every row labelled 3: purity = share of queries labelled 3, whatever is found
    out = m.training_step(views(), info())
    assert out["nn_purity"].item() == pytest.approx(3 / 6)
    assert not out["nn_purity"].requires_grad
    out = make().training_step(views(), info(labels=False))
    assert "nn_purity" not in out and "nn_self" in out
    # an empty queue (only random initial rows): purity is undefined
    assert math.isnan(make().training_step(views(), info())["nn_purity"].item())
