"""MSVQ and ReSSL (methods/msvq.py, methods/ressl.py): step bookkeeping, EMA, gradients, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from relssl.errors import ConfigError
from relssl.losses import msvq_loss
from relssl.methods import METHODS, StepInfo, method_config
from relssl.losses import relation_ce, relation_targets
from relssl.methods.msvq import MSVQ
from relssl.methods.ressl import ReSSL
from relssl.nn import build_backbone


N = 8  # batch


def make(cls, **options):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("convnet_tiny", in_channels=1)
    method = cls(backbone, feat_dim, cls.Config(proj_hidden=16, proj_dim=8, queue_size=32, **options))
    # make every network different, so a test can tell which one produced what
    with torch.no_grad():
        for i, teacher in enumerate(t for name, t in method.named_children() if name.startswith("teacher")):
            for p in teacher.parameters():
                p.add_(0.05 * (i + 1) * torch.randn_like(p))
    return method


def views(k):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(N, 1, 16, 16, generator=g) for _ in range(k)]


def info(step=3):
    return StepInfo(step=step, progress=0.1, index=torch.arange(100, 100 + N), labels=torch.arange(N) % 3,
                    generator=torch.Generator().manual_seed(2))


def check_rows(queue, z, inf):
    """The first N rows of a fresh queue hold n(z) with the step's index, label and step."""
    torch.testing.assert_close(queue.features[:N], F.normalize(z, dim=1), atol=1e-5, rtol=1e-5)
    assert torch.equal(queue.index[:N], inf.index)
    assert torch.equal(queue.labels[:N], inf.labels)
    assert (queue.step[:N] == inf.step).all() and (queue.step[N:] == -1).all()


def test_msvq_reads_queues_before_writing_them():
    m = make(MSVQ)
    x1, x2, x3, x4 = views(4)
    q1, q2 = m.queue1.features.clone(), m.queue2.features.clone()
    inf = info()
    out = m.training_step([x1, x2, x3, x4], inf)
    # recompute every embedding (no optimizer step ran; with one BN group Shuffle-BN changes nothing)
    with torch.no_grad():
        z1, z2, z3, z4 = m.student(x1), m.teacher1(x2), m.teacher1(x3), m.teacher2(x4)
    expected = msvq_loss(z1, z2, z3, z4, q1, q2, tau_t=0.04, tau_s=0.1)
    torch.testing.assert_close(out["loss"].detach(), expected, atol=1e-5, rtol=1e-5)
    after = msvq_loss(z1, z2, z3, z4, m.queue1.features, m.queue2.features)
    assert (out["loss"] - after).abs() > 1e-2  # the updated queues would give another loss
    # queue 1 <- teacher 1's x2, queue 2 <- teacher 2's x4, the rest untouched
    check_rows(m.queue1, z2, inf)
    check_rows(m.queue2, z4, inf)
    assert torch.equal(m.queue1.features[N:], q1[N:]) and torch.equal(m.queue2.features[N:], q2[N:])
    with torch.no_grad():
        assert not torch.allclose(m.queue2.features[:N], F.normalize(m.teacher1(x4), dim=1), atol=1e-3)
        assert not torch.allclose(m.queue1.features[:N], F.normalize(z3, dim=1), atol=1e-3)
    # monitoring: teacher 1's soft label of x2 over the old queue 1
    p = relation_targets(z2, q1, 0.04)
    entropy = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(out["target_entropy"], entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["target_max"], p.max(1).values.mean())
    assert 0 < out["target_entropy"] < math.log(32) and not out["target_entropy"].requires_grad


def test_msvq_second_step_uses_the_first_steps_keys():
    m = make(MSVQ)
    vs = views(4)
    m.training_step(vs, info(step=0))
    q1, q2 = m.queue1.features.clone(), m.queue2.features.clone()
    vs2 = [v.flip(-1) for v in vs]
    out = m.training_step(vs2, info(step=1))
    with torch.no_grad():
        z = [m.student(vs2[0]), m.teacher1(vs2[1]), m.teacher1(vs2[2]), m.teacher2(vs2[3])]
    torch.testing.assert_close(out["loss"].detach(), msvq_loss(*z, q1, q2), atol=1e-5, rtol=1e-5)
    assert (m.queue1.step[:N] == 0).all() and (m.queue1.step[N:2 * N] == 1).all()


def test_each_teacher_moves_at_its_own_momentum():
    m = make(MSVQ, m1=0.9, m2=0.6)
    s = [p.detach().clone() for p in m.student.parameters()]
    t1 = [p.detach().clone() for p in m.teacher1.parameters()]
    t2 = [p.detach().clone() for p in m.teacher2.parameters()]
    bufs = [b.clone() for b in m.teacher1.buffers()] + [b.clone() for b in m.teacher2.buffers()]
    m.after_optimizer_step(StepInfo(step=1, progress=0.0))
    for a, b, c, p1, p2, ps in zip(s, t1, t2, m.teacher1.parameters(), m.teacher2.parameters(),
                                   m.student.parameters()):
        assert not torch.equal(a, b) and not torch.equal(a, c)
        torch.testing.assert_close(p1, 0.9 * b + 0.1 * a, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(p2, 0.6 * c + 0.4 * a, atol=1e-6, rtol=1e-6)
        assert torch.equal(ps, a)  # the student is untouched
    # BN running statistics of the teachers are never copied (official code: parameters only)
    for old, new in zip(bufs, list(m.teacher1.buffers()) + list(m.teacher2.buffers())):
        assert torch.equal(old, new)


@pytest.mark.parametrize("cls, k", [(MSVQ, 4), (ReSSL, 2)])
def test_gradient_reaches_only_the_student(cls, k):
    m = make(cls)
    out = m.training_step(views(k), info())
    out["loss"].backward()
    for name, p in m.student.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    teachers = [t for name, t in m.named_children() if name.startswith("teacher")]
    assert teachers
    for t in teachers:
        assert all(not p.requires_grad and p.grad is None for p in t.parameters())
    assert all(not b.requires_grad for b in m.buffers())  # queues and BN statistics
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {f"student.{n}" for n, _ in
                                                                       m.student.named_parameters()}


def test_relation_term_is_msvq_with_one_teacher_and_one_queue():
    g = torch.Generator().manual_seed(0)
    z1, z2, z3, z4 = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(4))
    qa, qb = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    # by hand: CE(softmax(n(z2) n(Q)^T / 0.04), softmax(n(z1) n(Q)^T / 0.1)), mean over the 4 rows
    n = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    total = 0.0
    for i in range(4):
        t = [math.exp(float(n(z2)[i] @ n(qa)[j]) / 0.04) for j in range(5)]
        s = [math.exp(float(n(z1)[i] @ n(qa)[j]) / 0.1) for j in range(5)]
        total += -sum(t[j] / sum(t) * math.log(s[j] / sum(s)) for j in range(5))
    ce = relation_ce(z1, z2, qa, tau_t=0.04, tau_s=0.1)
    assert abs(ce.item() - total / 4) < 1e-12
    # ReSSL's loss = msvq_loss with the same teacher view in all three terms and one queue
    assert abs(ce.item() - msvq_loss(z1, z2, z2, z2, qa, qa).item()) < 1e-12
    # and msvq_loss is the mean of the three relation terms
    three = (relation_ce(z1, z2, qa) + relation_ce(z1, z3, qa) + relation_ce(z1, z4, qb)) / 3
    assert abs(three.item() - msvq_loss(z1, z2, z3, z4, qa, qb).item()) < 1e-12
    # gradient into the student only
    z1g = z1.clone().requires_grad_()
    z2g = z2.clone().requires_grad_()
    relation_ce(z1g, z2g, qa).backward()
    assert z1g.grad is not None and z2g.grad is None


def test_ressl_step_and_momentum():
    m = make(ReSSL, momentum=0.8)
    x1, x2 = views(2)
    q = m.queue.features.clone()
    inf = info()
    out = m.training_step([x1, x2], inf)
    with torch.no_grad():
        zq, zk = m.student(x1), m.teacher(x2)
    torch.testing.assert_close(out["loss"].detach(), relation_ce(zq, zk, q), atol=1e-5, rtol=1e-5)
    check_rows(m.queue, zk, inf)
    s = [p.detach().clone() for p in m.student.parameters()]
    t = [p.detach().clone() for p in m.teacher.parameters()]
    m.after_optimizer_step(StepInfo(step=1, progress=0.0))
    for a, b, p in zip(s, t, m.teacher.parameters()):
        torch.testing.assert_close(p, 0.8 * b + 0.2 * a, atol=1e-6, rtol=1e-6)


def test_options_are_checked():
    assert METHODS["msvq"] is MSVQ and METHODS["ressl"] is ReSSL
    assert MSVQ.default_views == ("strong", "weak", "weak", "weak") and ReSSL.default_views == ("strong", "weak")
    full = method_config({"name": "msvq"})
    assert (full["m1"], full["m2"], full["tau_t"], full["tau_s"], full["queue_size"]) == (0.99, 0.95, 0.04, 0.1, 4096)
    for bad, msg in [({"m1": 1.5}, "method.m1 must be in"), ({"tau_t": 0}, "method.tau_t must be > 0"),
                     ({"queue_size": 0}, "method.queue_size must be > 0"), ({"m3": 0.9}, "unknown config key")]:
        with pytest.raises(ConfigError, match=msg):
            method_config({"name": "msvq", **bad})
    with pytest.raises(ConfigError, match="method.momentum must be in"):
        method_config({"name": "ressl", "momentum": -0.1})
