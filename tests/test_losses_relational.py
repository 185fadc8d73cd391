"""msvq_loss, ascl_targets, ascl_loss, ascl_byol_loss: hand values, loop references, properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relssl.losses import ascl_byol_loss, ascl_loss, ascl_targets, moco_loss, msvq_loss
from loss_helpers import E, t64, unit


def softmax_list(values):
    m = max(values)
    ex = [math.exp(v - m) for v in values]
    z = sum(ex)
    return [x / z for x in ex]


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


# ----------------------------------------------------------------------------------------------
# references (loops over rows, float64)
# ----------------------------------------------------------------------------------------------


def ref_msvq(z1, z2, z3, z4, q1, q2, tau_t, tau_s):
    q1r = [unit(q1[k]) for k in range(q1.shape[0])]
    q2r = [unit(q2[k]) for k in range(q2.shape[0])]

    def ce(teacher, queue_rows, student):
        total = 0.0
        for i in range(teacher.shape[0]):
            pt = softmax_list([float(unit(teacher[i]) @ r) / tau_t for r in queue_rows])
            ps = softmax_list([float(unit(student[i]) @ r) / tau_s for r in queue_rows])
            total += -sum(a * math.log(b) for a, b in zip(pt, ps))
        return total / teacher.shape[0]

    return (ce(z2, q1r, z1) + ce(z3, q1r, z1) + ce(z4, q2r, z1)) / 3


def ref_ascl_target_row(k_row, queue_rows, t2, nn_num, relation):
    s = [float(unit(k_row) @ r) / t2 for r in queue_rows]
    kq = len(s)
    if relation == "moco":
        w = [0.0] * kq
    else:
        p = softmax_list(s)
        c = max(0.0, 1 - entropy(p) / math.log(kq)) if kq > 1 else 0.0
        order = sorted(range(kq), key=lambda j: -s[j])[:nn_num]
        if relation == "ascl":
            w = [min(nn_num * c * pj, 1.0) for pj in p]
        elif relation == "ahcl":
            w = [c if j in order else 0.0 for j in range(kq)]
        else:
            w = [1.0 if j in order else 0.0 for j in range(kq)]
    total = 1 + sum(w)
    return [1 / total] + [x / total for x in w]


def ref_ascl_loss(q, k, queue, t1, t2, nn_num, relation):
    qrows = [unit(queue[j]) for j in range(queue.shape[0])]
    total = 0.0
    for i in range(q.shape[0]):
        qi = unit(q[i])
        logits = [float(qi @ unit(k[i])) / t1] + [float(qi @ r) / t1 for r in qrows]
        m = max(logits)
        log_z = m + math.log(sum(math.exp(x - m) for x in logits))
        y = ref_ascl_target_row(k[i], qrows, t2, nn_num, relation)
        total += -sum(yj * (lj - log_z) for yj, lj in zip(y, logits))
    return total / q.shape[0]


def ref_ascl_byol(h, k, t2, nn_num):
    n = h.shape[0]
    ks = [unit(k[j]) for j in range(n)]
    total = 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        p = softmax_list([float(ks[i] @ ks[j]) / t2 for j in others])
        c = max(0.0, 1 - entropy(p) / math.log(n - 1))
        y = [0.0] * n
        y[i] = 1.0
        for j, pj in zip(others, p):
            y[j] = min(nn_num * c * pj, 1.0)
        s = sum(y)
        hi = unit(h[i])
        total += 2 - 2 * sum(y[j] / s * float(hi @ ks[j]) for j in range(n))
    return total / n


# ----------------------------------------------------------------------------------------------
# MSVQ
# ----------------------------------------------------------------------------------------------


def test_msvq_hand_value():
    z1 = t64([[2, 0]])
    z2, z3, z4 = t64([[0, 1]]), t64([[1, 0]]), t64([[0, 5]])
    queue1 = t64([[1, 0], [0, 1]])
    queue2 = t64([[1, 0], [-1, 0]])
    log_s1 = [1 - math.log(E + 1), -math.log(E + 1)]  # student z1 . queue1 = [1, 0]
    log_s2 = [1 - math.log(E + 1 / E), -1 - math.log(E + 1 / E)]  # z1 . queue2 = [1, -1]
    p_a = [1 / (1 + E), E / (1 + E)]  # z2 . queue1 = [0, 1]
    p_b = [E / (1 + E), 1 / (1 + E)]  # z3 . queue1 = [1, 0]
    p_c = [0.5, 0.5]  # z4 . queue2 = [0, 0]
    ce_a = -(p_a[0] * log_s1[0] + p_a[1] * log_s1[1])
    ce_b = -(p_b[0] * log_s1[0] + p_b[1] * log_s1[1])
    ce_c = -(p_c[0] * log_s2[0] + p_c[1] * log_s2[1])
    got = msvq_loss(z1, z2, z3, z4, queue1, queue2, tau_t=1.0, tau_s=1.0)
    assert got.item() == pytest.approx((ce_a + ce_b + ce_c) / 3, abs=1e-12)


def test_msvq_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2, z3, z4 = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(4))
    q1 = torch.randn(10, 6, generator=g, dtype=torch.float64)
    q2 = torch.randn(7, 6, generator=g, dtype=torch.float64)
    for tau_t, tau_s in ((0.04, 0.1), (0.5, 0.2)):
        got = msvq_loss(z1, z2, z3, z4, q1, q2, tau_t, tau_s)
        assert got.item() == pytest.approx(ref_msvq(z1, z2, z3, z4, q1, q2, tau_t, tau_s), abs=1e-10)


def test_msvq_one_hot_teacher_is_plain_cross_entropy_on_argmax():
    g = torch.Generator().manual_seed(1)
    z1, z2, z3, z4 = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(4))
    q1 = torch.randn(9, 4, generator=g, dtype=torch.float64)
    q2 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    n = lambda x: F.normalize(x, dim=1)  # noqa: E731
    s1 = n(z1) @ n(q1).T / 0.1
    s2 = n(z1) @ n(q2).T / 0.1
    ce_a = F.cross_entropy(s1, (n(z2) @ n(q1).T).argmax(1))
    ce_b = F.cross_entropy(s1, (n(z3) @ n(q1).T).argmax(1))
    ce_c = F.cross_entropy(s2, (n(z4) @ n(q2).T).argmax(1))
    got = msvq_loss(z1, z2, z3, z4, q1, q2, tau_t=1e-9, tau_s=0.1)  # min top-2 gap here is 5e-6
    assert got.item() == pytest.approx(((ce_a + ce_b + ce_c) / 3).item(), abs=1e-9)


def test_msvq_gradient_only_into_student():
    z1, z2, z3, z4 = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
    q1, q2 = torch.randn(5, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    grads = torch.autograd.grad(msvq_loss(z1, z2, z3, z4, q1, q2), [z1, z2, z3, z4, q1, q2], allow_unused=True)
    assert grads[0] is not None
    assert all(g is None for g in grads[1:])


def test_msvq_errors():
    z = torch.randn(3, 4)
    q = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"msvq_loss: tau_t must be a finite number > 0, got 0.0"):
        msvq_loss(z, z, z, z, q, q, tau_t=0.0)
    with pytest.raises(ValueError, match=r"msvq_loss: tau_s must be a finite number > 0"):
        msvq_loss(z, z, z, z, q, q, tau_s=-0.1)
    with pytest.raises(ValueError, match=r"msvq_loss: queue2 must have D = 4 columns"):
        msvq_loss(z, z, z, z, q, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"msvq_loss: z4 must have the same shape as z1"):
        msvq_loss(z, z, z, torch.randn(2, 4), q, q)


# ----------------------------------------------------------------------------------------------
# ASCL targets
# ----------------------------------------------------------------------------------------------

QUEUE3 = [[1, 0], [0, 1], [-1, 0]]


def _hand_confidence():
    # k = e1, queue = [e1, e2, -e1], t2 = 1: logits s = [1, 0, -1]
    z = E + 1 + 1 / E
    p = [E / z, 1 / z, (1 / E) / z]
    h = math.log(z) - (E - 1 / E) / z  # -sum p log p with log p = s - log z
    return p, 1 - h / math.log(3)


def test_ascl_targets_hand_values_all_relations():
    k, queue = t64([[1, 0]]), t64(QUEUE3)
    p, c = _hand_confidence()
    cases = {
        "ascl": [1 / (1 + c)] + [c * pj / (1 + c) for pj in p],
        "ahcl": [1 / (1 + c), c / (1 + c), 0.0, 0.0],
        "hard": [0.5, 0.5, 0.0, 0.0],
        "moco": [1.0, 0.0, 0.0, 0.0],
    }
    for relation, expected in cases.items():
        y = ascl_targets(k, queue, t2=1.0, nn_num=1, relation=relation)
        assert y.shape == (1, 4)
        assert y[0].tolist() == pytest.approx(expected, abs=1e-12), relation
    y = ascl_targets(k, queue, t2=1.0, nn_num=2, relation="hard")
    assert y[0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0], abs=1e-12)


def test_ascl_targets_clamp_at_one():
    k, queue = t64([[1, 0]]), t64(QUEUE3)
    # t2 = 0.25: logits [4, 0, -4] are peaked, nn_num * c * p_1 > 1 is clamped
    s = [4.0, 0.0, -4.0]
    p = softmax_list(s)
    c = 1 - entropy(p) / math.log(3)
    w = [min(3 * c * pj, 1.0) for pj in p]
    assert 3 * c * p[0] > 1
    expected = [1 / (1 + sum(w))] + [x / (1 + sum(w)) for x in w]
    assert ascl_targets(k, queue, 0.25, 3)[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_ascl_confidence_zero_for_uniform_and_one_for_peaked():
    k = t64([[1, 0, 0], [0, 1, 0]])
    same = t64([[0, 0, 1]] * 5)  # every key equally similar to every entry: uniform p, c = 0
    y = ascl_targets(k, same, t2=0.05, nn_num=3)
    assert torch.allclose(y, t64([[1, 0, 0, 0, 0, 0]] * 2), atol=1e-7)
    peaked = t64([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 1, 0]])  # each key has an exact copy in the queue
    y = ascl_targets(k, peaked, t2=0.01, nn_num=1)
    expected = t64([[0.5, 0.5, 0, 0, 0], [0.5, 0, 0, 0, 0.5]])
    assert torch.allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize("relation", ["ascl", "ahcl", "hard", "moco"])
def test_ascl_targets_rows_sum_to_one_positive_largest(relation):
    g = torch.Generator().manual_seed(2)
    k = torch.randn(6, 5, generator=g, dtype=torch.float64)
    queue = torch.randn(12, 5, generator=g, dtype=torch.float64)
    for nn_num in (1, 3):
        y = ascl_targets(k, queue, 0.05, nn_num, relation)
        assert y.shape == (6, 13)
        assert torch.allclose(y.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-12)
        assert (y >= 0).all() and (y[:, 0] > 0).all()
        assert (y[:, :1] >= y[:, 1:] - 1e-15).all()
        for i in range(6):
            expected = ref_ascl_target_row(k[i], [unit(queue[j]) for j in range(12)], 0.05, nn_num, relation)
            assert y[i].tolist() == pytest.approx(expected, abs=1e-10)
    assert not y.requires_grad


def test_ascl_targets_errors():
    k, queue = torch.randn(2, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"ascl_targets: relation must be one of 'ascl', 'ahcl', 'hard', 'moco', got 'normal'"):
        ascl_targets(k, queue, relation="normal")
    with pytest.raises(ValueError, match=r"ascl_targets: nn_num must be an int in \[1, 6\], got 7"):
        ascl_targets(k, queue, nn_num=7, relation="hard")
    with pytest.raises(ValueError, match=r"ascl_targets: nn_num must be an int >= 1, got 0"):
        ascl_targets(k, queue, nn_num=0)
    with pytest.raises(ValueError, match=r"ascl_targets: queue must have K >= 2 rows for relation 'ascl'"):
        ascl_targets(k, queue[:1])
    with pytest.raises(ValueError, match=r"ascl_targets: t2 must be a finite number > 0"):
        ascl_targets(k, queue, t2=0)


# ----------------------------------------------------------------------------------------------
# ASCL loss
# ----------------------------------------------------------------------------------------------


def test_ascl_loss_hand_value():
    q, k, queue = t64([[0, 3]]), t64([[1, 0]]), t64(QUEUE3)
    p, c = _hand_confidence()
    # logits [q.k, q.queue] = [0, 0, 1, 0] (t1 = 1); loss = log(3 + e) - y_2 * 1
    expected = math.log(3 + E) - c * p[1] / (1 + c)
    got = ascl_loss(q, k, queue, t1=1.0, t2=1.0, nn_num=1, relation="ascl")
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_ascl_relation_moco_equals_moco_loss_exactly():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    queue = torch.randn(16, 5, generator=g)
    for t1 in (0.1, 0.2):
        a = ascl_loss(q, k, queue, t1=t1, relation="moco")
        b = moco_loss(q, k, queue, temperature=t1)
        assert torch.equal(a, b)


@pytest.mark.parametrize("relation", ["ascl", "ahcl", "hard", "moco"])
def test_ascl_loss_matches_loop_reference(relation):
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    queue = torch.randn(9, 4, generator=g, dtype=torch.float64)
    for nn_num in (1, 2):
        got = ascl_loss(q, k, queue, 0.1, 0.05, nn_num, relation)
        assert got.item() == pytest.approx(ref_ascl_loss(q, k, queue, 0.1, 0.05, nn_num, relation), abs=1e-10)


def test_ascl_loss_gradient_only_into_query():
    q, k = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    queue = torch.randn(7, 3, requires_grad=True)
    gq, gk, gqueue = torch.autograd.grad(ascl_loss(q, k, queue), [q, k, queue], allow_unused=True)
    assert gq is not None and gk is None and gqueue is None


def test_ascl_loss_errors():
    q, queue = torch.randn(2, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"ascl_loss: t1 must be a finite number > 0"):
        ascl_loss(q, q, queue, t1=0.0)
    with pytest.raises(ValueError, match=r"ascl_loss: relation must be one of"):
        ascl_loss(q, q, queue, relation="soft")
    with pytest.raises(ValueError, match=r"ascl_loss: queue must have D = 4 columns"):
        ascl_loss(q, q, torch.randn(6, 2))


# ----------------------------------------------------------------------------------------------
# ASCL, BYOL form
# ----------------------------------------------------------------------------------------------


def test_ascl_byol_hand_value():
    k = t64([[1, 0], [0, 1], [3, 4]])  # e1, e2, (0.6, 0.8)
    h = t64([[1, 0], [2, 0], [0, 1]])  # e1, e1, e2

    def conf(a, b):  # softmax over the two other keys and c = 1 - H / log 2
        p = [math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))]
        return p, 1 - (-(p[0] * math.log(p[0]) + p[1] * math.log(p[1]))) / math.log(2)

    p, c = conf(0.0, 0.6)  # row 0: others k1 (0), k2 (0.6); h0 . k = [1, 0, 0.6]
    l0 = 2 - 2 * (1 * 1 + c * p[0] * 0 + c * p[1] * 0.6) / (1 + c)
    p, c = conf(0.0, 0.8)  # row 1: others k0 (0), k2 (0.8); h1 . k = [1, 0, 0.6]
    l1 = 2 - 2 * (c * p[0] * 1 + 1 * 0 + c * p[1] * 0.6) / (1 + c)
    p, c = conf(0.6, 0.8)  # row 2: others k0 (0.6), k1 (0.8); h2 . k = [0, 1, 0.8]
    l2 = 2 - 2 * (c * p[0] * 0 + c * p[1] * 1 + 1 * 0.8) / (1 + c)
    got = ascl_byol_loss(h, k, t2=1.0, nn_num=1)
    assert got.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-12)


def test_ascl_byol_matches_loop_reference_and_gradient():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    for t2, nn_num in ((0.05, 1), (0.5, 3)):
        got = ascl_byol_loss(h, k, t2, nn_num)
        assert got.item() == pytest.approx(ref_ascl_byol(h.detach(), k.detach(), t2, nn_num), abs=1e-10)
    gh, gk = torch.autograd.grad(got, [h, k], allow_unused=True)
    assert gh is not None and gk is None


def test_ascl_byol_errors():
    with pytest.raises(ValueError, match=r"ascl_byol_loss: k must have at least 3 row"):
        ascl_byol_loss(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"ascl_byol_loss: k must have the same shape as h"):
        ascl_byol_loss(torch.randn(4, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"ascl_byol_loss: nn_num must be an int >= 1"):
        ascl_byol_loss(torch.randn(4, 4), torch.randn(4, 4), nn_num=0.5)
