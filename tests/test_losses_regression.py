"""byol_regression, byol_loss, msf_loss: hand values, loop references, edge cases."""

from __future__ import annotations

import pytest
import torch

from relssl.losses import byol_loss, byol_regression, msf_loss
from loss_helpers import t64, unit


def ref_byol_direction(p, z):
    return sum(2 - 2 * float(unit(p[i]) @ unit(z[i])) for i in range(p.shape[0])) / p.shape[0]


def ref_msf(p, t, bank, topk):
    rows = [unit(bank[k]) for k in range(bank.shape[0])]
    total = 0.0
    for i in range(p.shape[0]):
        ti, pi = unit(t[i]), unit(p[i])
        order = sorted(range(len(rows)), key=lambda k: -float(ti @ rows[k]))[:topk]
        total += sum(2 - 2 * float(pi @ rows[k]) for k in order) / topk
    return total / p.shape[0]


# ----------------------------------------------------------------------------------------------
# BYOL
# ----------------------------------------------------------------------------------------------


def test_byol_hand_value():
    p1, zt2 = t64([[1, 0], [0, 2]]), t64([[3, 4], [0, 1]])  # cos 0.6, 1   -> 0.8, 0
    p2, zt1 = t64([[0, 1], [1, 1]]), t64([[0, -3], [-1, -1]])  # cos -1, -1 -> 4, 4
    assert byol_loss(p1, p2, zt1, zt2).item() == pytest.approx((0.8 + 0.0) / 2 + (4 + 4) / 2, abs=1e-12)
    assert byol_regression(p1, zt2).item() == pytest.approx(0.4, abs=1e-12)
    assert byol_regression(p1, zt2, reduction="sum").item() == pytest.approx(0.8, abs=1e-12)


def test_byol_matches_loop_reference_and_range():
    g = torch.Generator().manual_seed(0)
    p1, p2, zt1, zt2 = (torch.randn(9, 5, generator=g, dtype=torch.float64) for _ in range(4))
    expected = ref_byol_direction(p1, zt2) + ref_byol_direction(p2, zt1)
    got = byol_loss(p1, p2, zt1, zt2).item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= got <= 8.0


def test_byol_gradient_only_into_predictions():
    p1, p2, zt1, zt2 = (torch.randn(4, 3, requires_grad=True) for _ in range(4))
    grads = torch.autograd.grad(byol_loss(p1, p2, zt1, zt2), [p1, p2, zt1, zt2], allow_unused=True)
    assert grads[0] is not None and grads[1] is not None
    assert grads[2] is None and grads[3] is None


def test_byol_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"byol_loss: zt2 must have the same shape as p1"):
        byol_loss(x, x, x, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"byol_regression: reduction must be one of 'mean', 'sum', got 'none'"):
        byol_regression(x, x, reduction="none")


# ----------------------------------------------------------------------------------------------
# MSF
# ----------------------------------------------------------------------------------------------


def test_msf_hand_value():
    bank = t64([[1, 0], [0, 1], [3, 4], [-1, 0]])
    t = t64([[2, 0]])  # similarities to the bank: 1, 0, 0.6, -1
    p = t64([[0, 1]])  # distances 2 - 2 p.b: 2, 0, 0.4, 2
    assert msf_loss(p, t, bank, topk=1).item() == pytest.approx(2.0, abs=1e-12)
    assert msf_loss(p, t, bank, topk=2).item() == pytest.approx((2.0 + 0.4) / 2, abs=1e-12)
    assert msf_loss(p, t, bank, topk=3).item() == pytest.approx((2.0 + 0.4 + 0.0) / 3, abs=1e-12)


def test_msf_topk1_official_order_is_byol_term():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(6, 8, generator=g, dtype=torch.float64)
    t = torch.randn(6, 8, generator=g, dtype=torch.float64)
    old = torch.randn(20, 8, generator=g, dtype=torch.float64)
    tn = torch.nn.functional.normalize(t, dim=1)
    bank = torch.cat([tn, old[6:]])  # official order: this step's targets enqueued first
    got = msf_loss(p, t, bank, topk=1)
    assert got.item() == pytest.approx(byol_regression(p, t).item(), abs=1e-12)
    assert got.item() == pytest.approx(ref_byol_direction(p, t), abs=1e-12)


def test_msf_matches_loop_reference():
    g = torch.Generator().manual_seed(2)
    p, t = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    bank = torch.randn(17, 4, generator=g, dtype=torch.float64)
    for k in (1, 3, 5, 17):
        assert msf_loss(p, t, bank, k).item() == pytest.approx(ref_msf(p, t, bank, k), abs=1e-12)


def test_msf_gradient_only_into_prediction():
    p, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    bank = torch.randn(9, 3, requires_grad=True)
    gp, gt, gb = torch.autograd.grad(msf_loss(p, t, bank, 2), [p, t, bank], allow_unused=True)
    assert gp is not None and gt is None and gb is None


def test_msf_errors():
    p = torch.randn(3, 4)
    bank = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"msf_loss: topk must be an int in \[1, 4\], got 5"):
        msf_loss(p, p, bank, topk=5)
    with pytest.raises(ValueError, match=r"msf_loss: topk must be an int in \[1, 4\], got 0"):
        msf_loss(p, p, bank, topk=0)
    with pytest.raises(ValueError, match=r"msf_loss: bank must have D = 4 columns"):
        msf_loss(p, p, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"msf_loss: t must have the same shape as p"):
        msf_loss(p, torch.randn(2, 4), bank)
