"""pseudo_nn and pnnclr_loss: hand values, loop references, gradients, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from relssl.losses import pnnclr_loss, pseudo_nn
from loss_helpers import E, lse, t64, unit


def ref_pnn_rows(x, support, t, noise=None):
    """Rows of the pseudo-NN of x, computed one row at a time."""
    sup = [unit(support[k]) for k in range(support.shape[0])]
    out = []
    for i in range(x.shape[0]):
        u = unit(x[i])
        best = max(range(len(sup)), key=lambda k: float(u @ sup[k]))
        row = (1 - t) * u + t * sup[best]
        if noise is not None:
            row = row + noise[i]
        out.append(row)
    return out


def ref_pnnclr_rows(a, b, support, tau, t, noises=None):
    noises = noises or [None] * 4
    n = a.shape[0]
    A = [unit(a[i]) for i in range(n)]
    B = [unit(b[i]) for i in range(n)]
    pa0 = ref_pnn_rows(a, support, t, noises[0])
    pa1 = ref_pnn_rows(a, support, t, noises[1])
    pb2 = ref_pnn_rows(b, support, t, noises[2])
    pb3 = ref_pnn_rows(b, support, t, noises[3])
    blocks = [
        [[float(pa0[i] @ B[j]) for j in range(n)] for i in range(n)],  # pNN(A) B^T
        [[float(B[i] @ pa1[j]) for j in range(n)] for i in range(n)],  # B pNN(A)^T
        [[float(pb2[i] @ A[j]) for j in range(n)] for i in range(n)],  # pNN(B) A^T
        [[float(A[i] @ pb3[j]) for j in range(n)] for i in range(n)],  # A pNN(B)^T
    ]
    rows = []
    for block in blocks:
        for i in range(n):
            logits = [v / tau for v in block[i]]
            rows.append(-(logits[i] - lse(logits)))
    return rows


# ----------------------------------------------------------------------------------------------
# pseudo_nn
# ----------------------------------------------------------------------------------------------


def test_pseudo_nn_hand_value_not_renormalised():
    support = t64([[1, 0], [0, 3]])
    q = t64([[2, 1], [-1, 4]])  # NN: e1 ; e2
    s5, s17 = math.sqrt(5), math.sqrt(17)
    expected = [[0.05 * 2 / s5 + 0.95, 0.05 * 1 / s5], [0.05 * -1 / s17, 0.05 * 4 / s17 + 0.95]]
    got = pseudo_nn(q, support, t=0.95)
    assert torch.allclose(got, t64(expected), atol=1e-12)
    assert (got.norm(dim=1) < 1).all()


def test_pseudo_nn_t_one_is_plain_nn_and_t_zero_is_query():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 5, generator=g, dtype=torch.float64)
    support = torch.randn(9, 5, generator=g, dtype=torch.float64)
    sn = torch.nn.functional.normalize(support, dim=1)
    qn = torch.nn.functional.normalize(q, dim=1)
    nn = sn[(qn @ sn.T).argmax(1)]
    assert torch.equal(pseudo_nn(q, support, t=1.0), nn)
    assert torch.allclose(pseudo_nn(q, support, t=0.0), qn, atol=1e-15)
    ref = torch.stack(ref_pnn_rows(q, support, 0.3))
    assert torch.allclose(pseudo_nn(q, support, 0.3), ref, atol=1e-12)


def test_pseudo_nn_noise_and_per_sample_t():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 3, generator=g, dtype=torch.float64)
    support = torch.randn(7, 3, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(pseudo_nn(q, support, 0.95, noise), pseudo_nn(q, support, 0.95) + noise, atol=1e-15)
    t = t64([0.0, 0.5, 0.9, 1.0])
    got = pseudo_nn(q, support, t)
    for i in range(4):
        assert torch.allclose(got[i], ref_pnn_rows(q[i:i + 1], support, float(t[i]))[0], atol=1e-12)


def test_pseudo_nn_gradient_is_scaled_normalisation_jacobian():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    support = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    t = 0.5
    (grad,) = torch.autograd.grad((w * pseudo_nn(q, support, t)).sum(), [q])
    with torch.no_grad():
        for i in range(5):
            r = q[i].norm()
            u = q[i] / r
            jac = (torch.eye(4, dtype=torch.float64) - torch.outer(u, u)) / r  # d n(q) / d q
            assert torch.allclose(grad[i], (1 - t) * jac @ w[i], atol=1e-12)
    # finite differences (the argmax does not flip for small steps)
    assert torch.autograd.gradcheck(lambda x: pseudo_nn(x, support.detach(), t), (q,))
    _, gs = torch.autograd.grad(pseudo_nn(q, support, t).sum(), [q, support], allow_unused=True)
    assert gs is None


def test_pseudo_nn_topk_draw():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(16, 3, generator=g)
    support = torch.randn(10, 3, generator=g)
    sn = torch.nn.functional.normalize(support, dim=1)
    top3 = (torch.nn.functional.normalize(q, dim=1) @ sn.T).topk(3, dim=1).indices
    a = pseudo_nn(q, support, 1.0, topk=3, generator=torch.Generator().manual_seed(7))
    b = pseudo_nn(q, support, 1.0, topk=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    for i in range(16):
        assert any(torch.equal(a[i], sn[j]) for j in top3[i])


def test_pseudo_nn_errors():
    q, s = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"pseudo_nn: t must lie in \[0, 1\], got 1.5"):
        pseudo_nn(q, s, t=1.5)
    with pytest.raises(ValueError, match=r"pseudo_nn: t values must lie in \[0, 1\]"):
        pseudo_nn(q, s, t=torch.tensor([0.5, -0.1, 0.2]))
    with pytest.raises(ValueError, match=r"pseudo_nn: t must be a number or a tensor of shape \(\) or \(3,\)"):
        pseudo_nn(q, s, t=torch.ones(4))
    with pytest.raises(ValueError, match=r"pseudo_nn: noise must be broadcastable to \(3, 4\)"):
        pseudo_nn(q, s, noise=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"pseudo_nn: topk must be an int in \[1, 5\], got 6"):
        pseudo_nn(q, s, topk=6)
    with pytest.raises(ValueError, match=r"pseudo_nn: support must have D = 4 columns"):
        pseudo_nn(q, torch.randn(5, 3))


# ----------------------------------------------------------------------------------------------
# pnnclr_loss
# ----------------------------------------------------------------------------------------------


def test_pnnclr_hand_value():
    support = t64([[1, 0], [0, 1]])
    a = t64([[1, 0], [0, 1]])  # pNN(A) = A (each row is its own NN)
    b = t64([[3, 4], [4, 3]])  # (0.6, 0.8) -> NN e2 -> pNN (0.03, 0.99); (0.8, 0.6) -> (0.99, 0.03)
    # S1 = S2 = [[0.6, 0.8], [0.8, 0.6]], S3 = S4 = [[0.03, 0.99], [0.99, 0.03]]; targets on the diagonal
    r12 = -0.6 + math.log(E ** 0.6 + E ** 0.8)
    r34 = -0.03 + math.log(E ** 0.03 + E ** 0.99)
    mean = (4 * r12 + 4 * r34) / 8
    assert pnnclr_loss(a, b, support, temperature=1.0, t=0.95).item() == pytest.approx(mean, abs=1e-12)
    got_sum = pnnclr_loss(a, b, support, 1.0, 0.95, reduction="sum")
    assert got_sum.item() == pytest.approx(8 * mean, abs=1e-12)


def test_pnnclr_matches_loop_reference_with_and_without_noise():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    support = torch.randn(12, 6, generator=g, dtype=torch.float64)
    rows = ref_pnnclr_rows(a, b, support, 0.1, 0.95)
    assert pnnclr_loss(a, b, support).item() == pytest.approx(sum(rows) / len(rows), abs=1e-10)
    assert pnnclr_loss(a, b, support, reduction="sum").item() == pytest.approx(sum(rows), abs=1e-9)
    noises = [0.1 * torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    rows = ref_pnnclr_rows(a, b, support, 0.2, 0.8, noises)
    got = pnnclr_loss(a, b, support, 0.2, 0.8, noises)
    assert got.item() == pytest.approx(sum(rows) / len(rows), abs=1e-10)
    assert torch.equal(pnnclr_loss(a, b, support, 0.2, 0.8, torch.stack(noises)), got)
    partial = [noises[0], None, None, None]  # noise in block S1 only
    rows = ref_pnnclr_rows(a, b, support, 0.2, 0.8, partial)
    assert pnnclr_loss(a, b, support, 0.2, 0.8, partial).item() == pytest.approx(sum(rows) / len(rows), abs=1e-10)


def test_pnnclr_gradient_only_into_online_predictions():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    support = torch.randn(6, 3, requires_grad=True)
    ga, gb, gs = torch.autograd.grad(pnnclr_loss(a, b, support), [a, b, support], allow_unused=True)
    assert ga is not None and gb is None and gs is None


def test_pnnclr_stochastic_extensions():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    support = torch.randn(10, 4, generator=g)
    base = pnnclr_loss(a, b, support)
    # t_min == t is the fixed-t loss
    same = pnnclr_loss(a, b, support, t=0.95, t_min=0.95, generator=torch.Generator().manual_seed(0))
    assert same.item() == pytest.approx(base.item(), abs=1e-6)
    x = pnnclr_loss(a, b, support, t=1.0, t_min=0.5, topk=3, generator=torch.Generator().manual_seed(1))
    y = pnnclr_loss(a, b, support, t=1.0, t_min=0.5, topk=3, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(x) and torch.equal(x, y)


def test_pnnclr_noise_std_draws_four_independent_block_noises():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    support = torch.randn(9, 4, generator=g, dtype=torch.float64)
    assert torch.equal(pnnclr_loss(a, b, support, noise_std=0.0), pnnclr_loss(a, b, support))
    got = pnnclr_loss(a, b, support, noise_std=0.1, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    noises = [0.1 * torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(4)]
    rows = ref_pnnclr_rows(a, b, support, 0.1, 0.95, noises)
    assert got.item() == pytest.approx(sum(rows) / len(rows), abs=1e-10)
    assert got.item() != pytest.approx(pnnclr_loss(a, b, support).item(), abs=1e-6)


def test_pnnclr_errors():
    a, s = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"pnnclr_loss: reduction must be one of 'mean', 'sum', got 'none'"):
        pnnclr_loss(a, a, s, reduction="none")
    with pytest.raises(ValueError, match=r"pnnclr_loss: noises must be None or a sequence of 4 tensors"):
        pnnclr_loss(a, a, s, noises=[torch.zeros(3, 4)] * 3)
    with pytest.raises(ValueError, match=r"pnnclr_loss: noises\[2\] must be broadcastable to \(3, 4\)"):
        pnnclr_loss(a, a, s, noises=[None, None, torch.zeros(5, 4), None])
    with pytest.raises(ValueError, match=r"pnnclr_loss: temperature must be a finite number > 0"):
        pnnclr_loss(a, a, s, temperature=0)
    with pytest.raises(ValueError, match=r"pnnclr_loss: t must lie in \[0, 1\], got -0.5"):
        pnnclr_loss(a, a, s, t=-0.5)
    with pytest.raises(ValueError, match=r"pnnclr_loss: t_min must be <= t"):
        pnnclr_loss(a, a, s, t=0.5, t_min=0.9)
    with pytest.raises(ValueError, match=r"pnnclr_loss: give noises or noise_std, not both"):
        pnnclr_loss(a, a, s, noises=[None] * 4, noise_std=0.1)
    with pytest.raises(ValueError, match=r"pnnclr_loss: noise_std must be a finite number >= 0"):
        pnnclr_loss(a, a, s, noise_std=-0.1)
    with pytest.raises(ValueError, match=r"pnnclr_loss: b must have the same shape as a"):
        pnnclr_loss(a, torch.randn(3, 5), s)
