"""MSF (methods/msf.py): official order (enqueue, then search), heads, EMA, purity, end to end."""

import math
import pytest
import torch
import torch.nn.functional as F

from relssl.errors import ConfigError
from relssl.losses import msf_loss
from relssl.methods import METHODS, StepInfo, method_config
from relssl.methods.msf import MSF
from relssl.metrics.falseneg import topk_neighbour_purity as neighbour_purity
from relssl.nn import FeatureQueue, build_backbone


N = 8


def make(**options):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("convnet_tiny", in_channels=1)
    options = {"queue_size": 32, **options}
    m = MSF(backbone, feat_dim, MSF.Config(**options))
    with torch.no_grad():  # a target different from the online network
        for p in m.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def views():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(N, 1, 16, 16, generator=g) for _ in range(2)]


def info(labels=True):
    return StepInfo(step=5, progress=0.1, index=torch.arange(N) + 40,
                    labels=torch.arange(N) % 4 if labels else None, generator=torch.Generator().manual_seed(2))


def embeddings(m, xq, xt):
    with torch.no_grad():  # one BN group: the target's Shuffle-BN changes nothing
        return m.predictor(m.online(xq)), m.target(xt)


def test_heads_follow_the_official_rule():
    m = make()  # convnet_tiny: 64-d features -> projection 64 -> 128 -> 16, prediction 16 -> 128 -> 16
    proj, pred = m.online.projector, m.predictor
    assert [type(x).__name__ for x in proj] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (proj[0].in_features, proj[0].out_features, proj[3].out_features) == (64, 128, 16)
    assert (pred[0].in_features, pred[0].out_features, pred[3].out_features) == (16, 128, 16)
    assert m.bank.features.shape == (32, 16)
    assert not hasattr(m.target, "predictor") and len(list(m.target.children())) == 2
    m = make(proj_hidden=24, proj_dim=12, pred_hidden=20)
    assert (m.online.projector[0].out_features, m.online.projector[3].out_features) == (24, 12)
    assert (m.predictor[0].in_features, m.predictor[0].out_features, m.predictor[3].out_features) == (12, 20, 12)


def test_topk_1_is_byol_because_targets_are_enqueued_first():
    m = make(topk=1)
    xq, xt = views()
    out = m.training_step([xq, xt], info())
    p, t = embeddings(m, xq, xt)
    byol = (2 - 2 * F.cosine_similarity(p, t, dim=1)).mean()
    torch.testing.assert_close(out["loss"].detach(), byol, atol=1e-5, rtol=1e-5)
    # the bank holds the normalised targets with their index / label / step
    torch.testing.assert_close(m.bank.features[:N], F.normalize(t, dim=1), atol=1e-5, rtol=1e-5)
    assert torch.equal(m.bank.index[:N], torch.arange(N) + 40) and (m.bank.step[:N] == 5).all()
    assert out["purity"] == 1.0  # each target's only neighbour is itself


def test_topk_5_searches_the_bank_after_the_write():
    m = make(topk=5)
    xq, xt = views()
    before = m.bank.features.clone()
    out = m.training_step([xq, xt], info())
    p, t = embeddings(m, xq, xt)
    torch.testing.assert_close(out["loss"].detach(), msf_loss(p, t, m.bank.features, topk=5), atol=1e-5, rtol=1e-5)
    assert (out["loss"] - msf_loss(p, t, before, topk=5)).abs() > 1e-2  # search-then-write is another loss


def test_gradient_and_momentum():
    m = make(momentum=0.7)
    out = m.training_step(views(), info(labels=False))
    assert "purity" not in out  # no labels, no label metric
    out["loss"].backward()
    for name, p in list(m.online.named_parameters()) + list(m.predictor.named_parameters()):
        assert p.grad is not None, name
    assert all(not p.requires_grad and p.grad is None for p in m.target.parameters())
    assert all(not b.requires_grad for b in m.buffers())
    s = [p.detach().clone() for p in m.online.parameters()]
    t = [p.detach().clone() for p in m.target.parameters()]
    m.after_optimizer_step(StepInfo(step=1, progress=0.0))
    for a, b, q in zip(s, t, m.target.parameters()):
        torch.testing.assert_close(q, 0.7 * b + 0.3 * a, atol=1e-6, rtol=1e-6)


def test_purity_on_a_bank_of_known_labels():
    bank = FeatureQueue(6, 2, init="zeros")
    e = torch.eye(2)
    rows = torch.stack([e[0], e[0] + 0.1 * e[1], e[0] - 0.2 * e[1], e[1], e[1] + 0.1 * e[0], e[1] - 0.3 * e[0]])
    bank.enqueue(rows, labels=torch.tensor([0, 1, -1, 1, 1, 2]))
    queries = torch.stack([e[0], e[1]])
    # query 0's top 3: rows 0, 1, 2 (labels 0, 1, -1); query 1's: rows 3, 4, 5 (labels 1, 1, 2)
    assert torch.equal(bank.topk(queries, 3)[1].sort(dim=1).values, torch.tensor([[0, 1, 2], [3, 4, 5]]))
    # label 0 for query 0 (1 hit of 2 known), label 1 for query 1 (2 hits of 3): 3 / 5 pooled
    purity = neighbour_purity(bank, queries, torch.tensor([0, 1]), topk=3)
    assert abs(purity.item() - 3 / 5) < 1e-6
    assert neighbour_purity(bank, queries, torch.tensor([2, 2]), topk=3).item() == pytest.approx(1 / 5)
    empty = FeatureQueue(6, 2)  # nothing written: no stored label, purity undefined (NaN, as nn_purity)
    assert math.isnan(neighbour_purity(empty, queries, torch.tensor([0, 1]), topk=3).item())


def test_any_bank_size_and_option_checks():
    m = make(topk=2, queue_size=5)  # smaller than the batch: works, keeps the last 5 targets
    out = m.training_step(views(), info())
    assert torch.isfinite(out["loss"]) and torch.equal(m.bank.index.sort().values, torch.arange(3, N) + 40)
    assert METHODS["msf"] is MSF and MSF.default_views == ("strong", "weak")
    full = method_config({"name": "msf"})
    assert (full["topk"], full["queue_size"], full["momentum"]) == (5, 16384, 0.99)
    with pytest.raises(ConfigError, match="method.topk \\(10\\) must be <= method.queue_size \\(8\\)"):
        method_config({"name": "msf", "topk": 10, "queue_size": 8})
    with pytest.raises(ConfigError, match="method.proj_dim must be > 0"):
        method_config({"name": "msf", "proj_dim": 0})
