import math

import pytest
import torch
import torch.nn.functional as F

from relssl.engine.optim import LARS, build_scheduler, param_groups, warmup_cosine
from relssl.metrics.knn import knn_accuracy, knn_scores, pixel_features, topk_accuracy


def test_weighted_knn_hand_computed():
    # bank: 3 points of class 0 near e1, 1 point of class 1 at e2; query between them
    bank = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 0, 1])
    q = F.normalize(torch.tensor([[0.2, 1.0]]), dim=1)
    s = knn_scores(bank, labels, q, num_classes=2, k=2, t=0.1)
    sims = q @ bank.T
    top2 = sims[0].topk(2)
    expected = torch.zeros(2)
    for v, i in zip(top2.values, top2.indices):
        expected[labels[i]] += math.exp(v.item() / 0.1)
    assert torch.allclose(s[0], expected, rtol=1e-5)
    assert s[0].argmax().item() == 1
    # uniform weighting: majority vote among k = 4 -> class 0 wins 3:1
    u = knn_scores(bank, labels, q, num_classes=2, k=4, weighting="uniform")
    assert u[0].tolist() == [3.0, 1.0]


def test_knn_chunks_and_k_capped():
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(50, 8), dim=1)
    labels = torch.randint(0, 5, (50,))
    q = F.normalize(torch.randn(33, 8), dim=1)
    a = knn_scores(bank, labels, q, 5, k=500, chunk=7)  # k larger than the bank is capped
    b = knn_scores(bank, labels, q, 5, k=50, chunk=1000)
    assert torch.allclose(a, b)
    # self-retrieval is perfect
    assert knn_accuracy(bank, labels, bank, labels, 5, k=1)["top1"] == 100.0
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(bank, labels, q, 5, t=0)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    acc = topk_accuracy(scores, torch.tensor([2, 0]), ks=(1, 2))
    assert acc == {"top1": 50.0, "top2": 100.0}


def test_pixel_knn_on_real_data_is_high(fmnist):
    # mean-centred pixels reach 82.4% with k=200, T=0.1 on the full sets (docs/evaluation.md);
    # on a 10k bank / 2k test subset it is a little lower but well above 75%.
    bank, test = fmnist.bank.subset(10000, seed=0), fmnist.test.subset(2000, seed=0)
    acc = knn_accuracy(pixel_features(bank.images), bank.labels, pixel_features(test.images), test.labels, 10)
    assert 75.0 < acc["top1"] < 90.0


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10, 1.0) == 0.0
    assert warmup_cosine(5, 100, 10, 1.0) == 0.5
    assert warmup_cosine(10, 100, 10, 1.0) == 1.0
    assert abs(warmup_cosine(55, 100, 10, 1.0) - 0.5) < 1e-12
    assert abs(warmup_cosine(100, 100, 10, 1.0)) < 1e-12
    assert abs(warmup_cosine(100, 100, 10, 1.0, min_lr=0.1) - 0.1) < 1e-12
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert lrs[-1] < 0.01


def test_param_groups_exclude_bn_bias():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    g = param_groups(net, 1e-4, exclude_bn_bias=True)
    assert len(g[0]["params"]) == 2 and len(g[1]["params"]) == 4 and g[1]["weight_decay"] == 0.0
    assert len(param_groups(net, 1e-4, exclude_bn_bias=False)) == 1


def test_lars_step_hand_computed():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    w.grad = torch.tensor([0.0, 1.0])
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.01)
    opt.step()
    # trust = 0.01 * 5 / 1 = 0.05 -> w -= 0.05 * g
    assert torch.allclose(w.detach(), torch.tensor([3.0, 3.95]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    b.grad = torch.tensor([2.0])
    opt = LARS([{"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=0.1, momentum=0.0)
    opt.step()
    assert torch.allclose(b.detach(), torch.tensor([0.8]))  # plain SGD for excluded params


def test_lars_two_steps_with_momentum_and_weight_decay_hand_computed():
    """Two LARS steps, momentum 0.9, weight decay 0.1, eta 0.5, checked against the formula by hand:
    g' = g + wd w; trust = eta ||w|| / ||g'||; buf = g' trust (first step), buf = 0.9 buf + g' trust;
    w -= lr buf."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    opt = LARS([w], lr=0.2, momentum=0.9, weight_decay=0.1, eta=0.5)
    w.grad = torch.tensor([1.0, 0.0])
    opt.step()
    # g' = [1.3, 0.4], ||g'|| = sqrt(1.85); trust = 0.5 * 5 / sqrt(1.85)
    t1 = 2.5 / math.sqrt(1.85)
    buf = torch.tensor([1.3, 0.4]) * t1
    w1 = torch.tensor([3.0, 4.0]) - 0.2 * buf
    torch.testing.assert_close(w.detach(), w1)
    w.grad = torch.tensor([0.0, 2.0])
    opt.step()
    g2 = torch.tensor([0.0, 2.0]) + 0.1 * w1
    t2 = 0.5 * w1.norm() / g2.norm()
    buf = 0.9 * buf + g2 * t2
    torch.testing.assert_close(w.detach(), w1 - 0.2 * buf)


def test_lr_scaling_of_the_config():
    """optim.lr_scaling: linear = lr x global batch / 256, sqrt = lr x sqrt(global batch) (WCL's rule)."""
    from relssl.config import OptimConfig
    from relssl.engine.optim import build_optimizer, scaled_lr

    assert scaled_lr(OptimConfig(lr=0.3, lr_scaling="none"), 4096) == 0.3
    assert scaled_lr(OptimConfig(lr=0.3, lr_scaling="linear"), 512) == pytest.approx(0.6)
    assert scaled_lr(OptimConfig(lr=0.075, lr_scaling="sqrt"), 4096) == pytest.approx(4.8)
    # and the optimizer the engine builds starts from that rate (LARS, BN and biases excluded)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, OptimConfig(name="lars", lr=0.075, lr_scaling="sqrt", exclude_bn_bias=True,
                                             weight_decay=1e-6), 4096)
    assert isinstance(opt, LARS)
    assert all(g["lr"] == pytest.approx(4.8) for g in opt.param_groups)
    excluded = [g for g in opt.param_groups if g["lars_exclude"]]
    assert excluded and all(g["weight_decay"] == 0.0 for g in excluded)
