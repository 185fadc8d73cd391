"""ntxent_loss, moco_loss, supcon_loss, nnclr_loss: hand values, loop references, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from relssl.losses import moco_loss, nnclr_loss, ntxent_loss, supcon_loss
from loss_helpers import E, lse, t64


def unit_rows(x):
    return [x[i] / x[i].norm() for i in range(x.shape[0])]


# ----------------------------------------------------------------------------------------------
# references (explicit loops over rows, float64)
# ----------------------------------------------------------------------------------------------


def ref_ntxent(z1, z2, tau):
    u = unit_rows(z1) + unit_rows(z2)
    n = z1.shape[0]
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        others = [float(u[a] @ u[c]) / tau for c in range(2 * n) if c != a]
        total += -(float(u[a] @ u[pos]) / tau - lse(others))
    return total / (2 * n)


def ref_moco(q, k, queue, tau):
    qs, ks, qu = unit_rows(q), unit_rows(k), unit_rows(queue)
    total = 0.0
    for i in range(len(qs)):
        logits = [float(qs[i] @ ks[i]) / tau] + [float(qs[i] @ e) / tau for e in qu]
        total += -(logits[0] - lse(logits))
    return total / len(qs)


def ref_supcon(features, labels, tau, tau_base, variant):
    b, v, _ = features.shape
    anchors, labs = [], []
    for view in range(v):
        for s in range(b):
            x = features[s, view]
            anchors.append(x / x.norm())
            labs.append(s if labels is None else int(labels[s]))
    m = len(anchors)
    total = 0.0
    for i in range(m):
        sims = {j: float(anchors[i] @ anchors[j]) / tau for j in range(m) if j != i}
        log_z = lse(list(sims.values()))
        positives = [j for j in sims if labs[j] == labs[i]]
        if not positives:
            continue
        if variant == "out":
            value = sum(sims[p] - log_z for p in positives) / len(positives)
        else:
            value = lse([sims[p] for p in positives]) - log_z
        total += -(tau / tau_base) * value
    return total / m


def ref_nnclr(z1, z2, p1, p2, support, tau, symmetrize):
    sup = unit_rows(support)

    def nn(z):
        out = []
        for row in unit_rows(z):
            best = max(range(len(sup)), key=lambda k: float(row @ sup[k]))
            out.append(sup[best])
        return out

    def ce_rows(mat):
        n = len(mat)
        return sum(-(mat[i][i] - lse(mat[i])) for i in range(n)) / n

    def term(nns, p):
        ps = unit_rows(p)
        mat = [[float(nns[i] @ ps[j]) / tau for j in range(len(ps))] for i in range(len(nns))]
        value = ce_rows(mat)
        if symmetrize:
            value += ce_rows([list(col) for col in zip(*mat)])
        return value

    return 0.5 * (term(nn(z1), p2) + term(nn(z2), p1))


# ----------------------------------------------------------------------------------------------
# NT-Xent
# ----------------------------------------------------------------------------------------------


def test_ntxent_hand_axis_vectors():
    z1 = t64([[1, 0], [0, 1]])
    z2 = t64([[0, 1], [1, 0]])
    # every anchor: positive at cosine 0, one other at cosine 1 (logit 2), one at 0
    assert ntxent_loss(z1, z2, 0.5).item() == pytest.approx(math.log(2 + E ** 2), abs=1e-12)
    # identical views: positive at logit 2, two others at 0
    assert ntxent_loss(z1, z1.clone(), 0.5).item() == pytest.approx(math.log(1 + 2 * E ** -2), abs=1e-12)


def test_ntxent_hand_non_axis_and_scale_invariance():
    z1 = t64([[1, 0], [0, 1]])
    z2 = t64([[3, 4], [0, 2]])  # normalises to (0.6, 0.8), (0, 1)
    l0 = math.log(2 + E ** 0.6) - 0.6
    l1 = math.log(1 + E ** 0.8 + E) - 1
    l2 = math.log(E ** 0.6 + 2 * E ** 0.8) - 0.6
    l3 = math.log(1 + E + E ** 0.8) - 1
    expected = (l0 + l1 + l2 + l3) / 4
    assert ntxent_loss(z1, z2, temperature=1.0).item() == pytest.approx(expected, abs=1e-12)
    assert ntxent_loss(7 * z1, 0.1 * z2, 1.0).item() == pytest.approx(expected, abs=1e-12)


def test_ntxent_single_pair_is_zero_and_tiny_temperature_identical_views():
    one = t64([[1.0, 2.0]])
    assert ntxent_loss(one, t64([[-3.0, 1.0]]), 0.5).item() == pytest.approx(0.0, abs=1e-12)
    z = torch.nn.functional.normalize(torch.randn(6, 16, dtype=torch.float64), dim=1)
    assert ntxent_loss(z, z.clone(), temperature=0.01).item() < 1e-6


def test_ntxent_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    for tau in (0.1, 0.5, 2.0):
        assert ntxent_loss(z1, z2, tau).item() == pytest.approx(ref_ntxent(z1, z2, tau), abs=1e-10)


def test_ntxent_gradient_reaches_both_views():
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    g1, g2 = torch.autograd.grad(ntxent_loss(z1, z2), [z1, z2])
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0


@pytest.mark.parametrize("tau", [0, -1.0, float("nan"), float("inf"), True, "0.5"])
def test_ntxent_bad_temperature(tau):
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"ntxent_loss: temperature must be a finite number > 0"):
        ntxent_loss(z, z, tau)


def test_ntxent_bad_shapes():
    with pytest.raises(ValueError, match=r"z2 must have the same shape as z1"):
        ntxent_loss(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"z1 must be 2-D"):
        ntxent_loss(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match=r"z1 must be a floating-point tensor"):
        ntxent_loss(torch.ones(3, 4, dtype=torch.long), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"z1 must be a torch.Tensor"):
        ntxent_loss([[1.0, 0.0]], torch.randn(1, 2))


# ----------------------------------------------------------------------------------------------
# MoCo
# ----------------------------------------------------------------------------------------------


def test_moco_hand_value_positive_at_column_zero():
    q = t64([[1, 0], [0, 1]])
    k = t64([[3, 4], [0, 5]])  # (0.6, 0.8), (0, 1)
    queue = t64([[0, 1], [-1, 0]])
    # row 0 logits [0.6, 0, -1] / 0.5 ; row 1 logits [1, 1, 0] / 0.5
    r0 = -1.2 + math.log(E ** 1.2 + 1 + E ** -2)
    r1 = -2.0 + math.log(2 * E ** 2 + 1)
    assert moco_loss(q, k, queue, 0.5).item() == pytest.approx((r0 + r1) / 2, abs=1e-12)


def test_moco_matches_loop_reference_and_empty_queue():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    queue = torch.randn(11, 4, generator=g, dtype=torch.float64)
    for tau in (0.07, 0.2, 1.0):
        assert moco_loss(q, k, queue, tau).item() == pytest.approx(ref_moco(q, k, queue, tau), abs=1e-10)
    assert moco_loss(q, k, queue[:0]).item() == pytest.approx(0.0, abs=1e-12)


def test_moco_no_gradient_into_key_or_queue():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    queue = torch.randn(6, 3, requires_grad=True)
    gq, gk, gqueue = torch.autograd.grad(moco_loss(q, k, queue), [q, k, queue], allow_unused=True)
    assert gq is not None and gk is None and gqueue is None


def test_moco_errors():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"moco_loss: queue must have D = 4 columns"):
        moco_loss(q, q, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"moco_loss: k must have the same shape as q"):
        moco_loss(q, torch.randn(2, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"moco_loss: temperature must be a finite number > 0, got -0.2"):
        moco_loss(q, q, torch.randn(5, 4), -0.2)


# ----------------------------------------------------------------------------------------------
# SupCon
# ----------------------------------------------------------------------------------------------


def _supcon_features():
    # sample 0: views e1, e1 ; sample 1: views e2, (0.6, 0.8)
    return t64([[[1, 0], [1, 0]], [[0, 1], [3, 4]]])


def test_supcon_hand_instance_labels():
    f = _supcon_features()
    # view-major anchors: [e1, e2, e1, (.6,.8)]
    a0 = 1 - math.log(1 + E + E ** 0.6)
    a1 = 0.8 - math.log(2 + E ** 0.8)
    a2 = 1 - math.log(E + 1 + E ** 0.6)
    a3 = 0.8 - math.log(2 * E ** 0.6 + E ** 0.8)
    expected = -(a0 + a1 + a2 + a3) / 4
    for variant in ("out", "in"):  # one positive each: both forms agree
        got = supcon_loss(f, None, temperature=1.0, base_temperature=1.0, variant=variant)
        assert got.item() == pytest.approx(expected, abs=1e-12)


def test_supcon_hand_shared_label_out_vs_in():
    f = _supcon_features()
    labels = torch.tensor([3, 3])
    sims = [[0, 1, 0.6], [0, 0, 0.8], [1, 0, 0.6], [0.6, 0.8, 0.6]]  # each anchor to its 3 others
    expected_out = -sum(sum(s) / 3 - math.log(sum(E ** x for x in s)) for s in sims) / 4
    out = supcon_loss(f, labels, temperature=1.0, base_temperature=1.0, variant="out")
    assert out.item() == pytest.approx(expected_out, abs=1e-12)
    # every candidate is a positive: L_in = -log 1 = 0
    assert supcon_loss(f, labels, 1.0, 1.0, "in").item() == pytest.approx(0.0, abs=1e-12)


def test_supcon_anchor_without_positive_divided_by_one():
    f = t64([[[1, 0]], [[3, 4]], [[0, 1]]])  # V = 1: e1, (.6,.8), e2
    labels = torch.tensor([0, 0, 1])  # anchor 2 has no positive
    l0 = -(0.6 - math.log(E ** 0.6 + 1))
    l1 = -(0.6 - math.log(E ** 0.6 + E ** 0.8))
    for variant in ("out", "in"):
        got = supcon_loss(f, labels, 1.0, 1.0, variant)
        assert torch.isfinite(got)
        assert got.item() == pytest.approx((l0 + l1 + 0.0) / 3, abs=1e-12)
    # no positives at all: 0, finite gradient
    x = torch.randn(4, 1, 3, dtype=torch.float64, requires_grad=True)
    for variant in ("out", "in"):
        loss = supcon_loss(x, None, variant=variant)
        (grad,) = torch.autograd.grad(loss, [x])
        assert loss.item() == 0.0 and torch.isfinite(grad).all()


def test_supcon_base_temperature_scaling():
    f = torch.randn(5, 2, 4, dtype=torch.float64)
    a = supcon_loss(f, None, temperature=0.5, base_temperature=0.5)
    b = supcon_loss(f, None, temperature=0.5, base_temperature=1.0)
    assert b.item() == pytest.approx(0.5 * a.item(), rel=1e-12)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_matches_loop_reference(variant):
    g = torch.Generator().manual_seed(2)
    f = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    for lab in (None, labels):
        got = supcon_loss(f, lab, temperature=0.2, base_temperature=0.07, variant=variant)
        assert got.item() == pytest.approx(ref_supcon(f, lab, 0.2, 0.07, variant), abs=1e-10)


def test_supcon_instance_labels_two_views_equal_ntxent():
    z1, z2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    sc = supcon_loss(torch.stack([z1, z2], dim=1), None, temperature=0.3, base_temperature=0.3)
    assert sc.item() == pytest.approx(ntxent_loss(z1, z2, 0.3).item(), abs=1e-12)


def test_supcon_errors():
    f = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"supcon_loss: features must have shape \(B, V, D\)"):
        supcon_loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"supcon_loss: labels must have shape \(4,\)"):
        supcon_loss(f, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"supcon_loss: labels must be None or an integer tensor"):
        supcon_loss(f, torch.zeros(4))
    with pytest.raises(ValueError, match=r"supcon_loss: variant must be one of 'out', 'in', got 'both'"):
        supcon_loss(f, variant="both")
    with pytest.raises(ValueError, match=r"supcon_loss: base_temperature must be a finite number > 0"):
        supcon_loss(f, base_temperature=0.0)


# ----------------------------------------------------------------------------------------------
# NNCLR
# ----------------------------------------------------------------------------------------------


def _nnclr_inputs():
    support = t64([[1, 0], [0, 1]])
    z1 = t64([[0.9, 0.1], [0.2, 0.8]])  # NN: e1, e2
    z2 = t64([[0.1, 0.9], [1.0, 0.2]])  # NN: e2, e1
    p1 = t64([[1, 0], [3, 4]])
    p2 = t64([[0, 1], [1, 0]])
    return z1, z2, p1, p2, support


def test_nnclr_hand_value():
    z1, z2, p1, p2, support = _nnclr_inputs()
    l1 = math.log(1 + E)  # rows NN(z1) = [e1, e2] vs p2 = [e2, e1]: logits [[0,1],[1,0]]
    l2 = 0.5 * (math.log(1 + E ** 0.8) + (-0.6 + math.log(E + E ** 0.6)))  # [[0,.8],[1,.6]]
    assert nnclr_loss(z1, z2, p1, p2, support, temperature=1.0).item() == pytest.approx(0.5 * (l1 + l2), abs=1e-12)
    l2t = 0.5 * (math.log(1 + E) + (-0.6 + math.log(E ** 0.8 + E ** 0.6)))  # transposed [[0,1],[.8,.6]]
    expected_sym = 0.5 * ((l1 + l1) + (l2 + l2t))
    got = nnclr_loss(z1, z2, p1, p2, support, 1.0, symmetrize=True)
    assert got.item() == pytest.approx(expected_sym, abs=1e-12)


@pytest.mark.parametrize("symmetrize", [False, True])
def test_nnclr_matches_loop_reference(symmetrize):
    g = torch.Generator().manual_seed(3)
    z1, z2, p1, p2 = (torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(4))
    support = torch.randn(13, 6, generator=g, dtype=torch.float64)
    got = nnclr_loss(z1, z2, p1, p2, support, 0.1, symmetrize)
    assert got.item() == pytest.approx(ref_nnclr(z1, z2, p1, p2, support, 0.1, symmetrize), abs=1e-10)


def test_nnclr_gradient_only_into_predictions():
    z1, z2, p1, p2 = (torch.randn(4, 3, requires_grad=True) for _ in range(4))
    support = torch.randn(8, 3, requires_grad=True)
    grads = torch.autograd.grad(nnclr_loss(z1, z2, p1, p2, support), [z1, z2, p1, p2, support], allow_unused=True)
    assert grads[0] is None and grads[1] is None and grads[4] is None
    assert grads[2] is not None and grads[3] is not None


def test_nnclr_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"nnclr_loss: support must have at least 1 row"):
        nnclr_loss(x, x, x, x, torch.randn(0, 4))
    with pytest.raises(ValueError, match=r"nnclr_loss: p2 must have the same shape as z1"):
        nnclr_loss(x, x, x, torch.randn(3, 5), torch.randn(6, 4))
    with pytest.raises(ValueError, match=r"nnclr_loss: symmetrize must be True or False"):
        nnclr_loss(x, x, x, x, torch.randn(6, 4), 0.1, 1)
