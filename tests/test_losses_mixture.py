"""bsim_infonce_loss and bsim_byol_loss: hand values, loop references, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relssl.losses import bsim_byol_loss, bsim_infonce_loss
from loss_helpers import E, lse, t64, unit


def ref_bsim_infonce(q, keys, perm, lam, tau, negatives=None):
    cand = [unit(keys[j]) for j in range(keys.shape[0])]
    if negatives is not None:
        cand += [unit(negatives[j]) for j in range(negatives.shape[0])]
    total = 0.0
    for i in range(q.shape[0]):
        qi = unit(q[i])
        logits = [float(qi @ c) / tau for c in cand]
        log_z = lse(logits)
        li = lam[i] if isinstance(lam, list) else lam
        total += -(li * (logits[i] - log_z) + (1 - li) * (logits[int(perm[i])] - log_z))
    return total / q.shape[0]


def ref_bsim_byol(p, z, perm, lam):
    total = 0.0
    for i in range(p.shape[0]):
        li = lam[i] if isinstance(lam, list) else lam
        pi = unit(p[i])
        total += li * (2 - 2 * float(pi @ unit(z[i]))) + (1 - li) * (2 - 2 * float(pi @ unit(z[int(perm[i])])))
    return total / p.shape[0]


def test_bsim_infonce_hand_value():
    q = t64([[3, 4], [1, 0]])
    keys = t64([[1, 0], [0, 2]])
    perm = torch.tensor([1, 0])
    # row 0 logits [0.6, 0.8]: 0.7 on key 0 (0.6), 0.3 on key 1 (0.8)
    # row 1 logits [1, 0]:     0.7 on key 1 (0),   0.3 on key 0 (1)
    r0 = -(0.7 * (0.6 - math.log(E ** 0.6 + E ** 0.8)) + 0.3 * (0.8 - math.log(E ** 0.6 + E ** 0.8)))
    r1 = -(0.7 * (0 - math.log(E + 1)) + 0.3 * (1 - math.log(E + 1)))
    assert bsim_infonce_loss(q, keys, perm, 0.7, 1.0).item() == pytest.approx((r0 + r1) / 2, abs=1e-12)
    # a queue of negatives [-e1] adds exp(-0.6) and exp(-1) to the two denominators
    r0 = -(0.7 * 0.6 + 0.3 * 0.8) + math.log(E ** 0.6 + E ** 0.8 + E ** -0.6)
    r1 = -(0.3 * 1) + math.log(E + 1 + E ** -1)
    got = bsim_infonce_loss(q, keys, perm, 0.7, 1.0, negatives=t64([[-1, 0]]))
    assert got.item() == pytest.approx((r0 + r1) / 2, abs=1e-12)


def test_bsim_infonce_lam_one_is_host_positive_term():
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    queue = torch.randn(10, 5, generator=g, dtype=torch.float64)
    perm = torch.randperm(6, generator=g)
    cand = torch.cat([F.normalize(keys, dim=1), F.normalize(queue, dim=1)])
    logits = F.normalize(q, dim=1) @ cand.T / 0.2
    host = F.cross_entropy(logits, torch.arange(6))
    got = bsim_infonce_loss(q, keys, perm, 1.0, 0.2, queue)
    assert got.item() == pytest.approx(host.item(), abs=1e-12)


def test_bsim_infonce_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    q, keys = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    negatives = torch.randn(9, 4, generator=g, dtype=torch.float64)
    perm = torch.flip(torch.arange(7), [0])
    lam = torch.rand(7, generator=g, dtype=torch.float64)
    for neg in (None, negatives):
        for lam_arg, lam_ref in ((0.3, 0.3), (lam, lam.tolist())):
            got = bsim_infonce_loss(q, keys, perm, lam_arg, 0.1, neg)
            assert got.item() == pytest.approx(ref_bsim_infonce(q, keys, perm, lam_ref, 0.1, neg), abs=1e-10)


def test_bsim_infonce_gradients():
    q = torch.randn(4, 3, requires_grad=True)
    keys = torch.randn(4, 3, requires_grad=True)
    neg = torch.randn(5, 3, requires_grad=True)
    lam = torch.rand(4, requires_grad=True)
    perm = torch.tensor([1, 2, 3, 0])
    grads = torch.autograd.grad(bsim_infonce_loss(q, keys, perm, lam, 0.2, neg), [q, keys, neg, lam], allow_unused=True)
    assert grads[0] is not None and grads[1] is None and grads[2] is None and grads[3] is None
    loss = bsim_infonce_loss(q, keys, perm, lam, 0.2, neg, detach_keys=False)
    gk, gn = torch.autograd.grad(loss, [keys, neg], allow_unused=True)
    assert gk is not None and gn is None


def test_bsim_byol_hand_value_and_lam_one():
    p = t64([[3, 4], [1, 0]])
    z = t64([[1, 0], [0, 2]])
    perm = torch.tensor([1, 0])
    # row 0: 0.7 (2 - 2 * 0.6) + 0.3 (2 - 2 * 0.8) ; row 1: 0.7 (2 - 2 * 0) + 0.3 (2 - 2 * 1)
    expected = (0.7 * 0.8 + 0.3 * 0.4 + 0.7 * 2 + 0.3 * 0) / 2
    assert bsim_byol_loss(p, z, perm, 0.7).item() == pytest.approx(expected, abs=1e-12)
    assert bsim_byol_loss(p, z, perm, 1.0).item() == pytest.approx((0.8 + 2.0) / 2, abs=1e-12)


def test_bsim_byol_matches_loop_reference_and_gradient():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    perm = torch.randperm(6, generator=g)
    lam = torch.rand(6, generator=g, dtype=torch.float64)
    got = bsim_byol_loss(p, z, perm, lam)
    assert got.item() == pytest.approx(ref_bsim_byol(p.detach(), z.detach(), perm, lam.tolist()), abs=1e-12)
    gp, gz = torch.autograd.grad(got, [p, z], allow_unused=True)
    assert gp is not None and gz is None


def test_bsim_errors():
    q = torch.randn(3, 4)
    perm = torch.tensor([1, 2, 0])
    with pytest.raises(ValueError, match=r"bsim_infonce_loss: lam must lie in \[0, 1\], got 1.2"):
        bsim_infonce_loss(q, q, perm, 1.2, 0.1)
    with pytest.raises(ValueError, match=r"bsim_infonce_loss: lam values must lie in \[0, 1\]"):
        bsim_infonce_loss(q, q, perm, torch.tensor([0.5, 0.5, -0.5]), 0.1)
    with pytest.raises(ValueError, match=r"bsim_infonce_loss: perm values must lie in \[0, 3\)"):
        bsim_infonce_loss(q, q, torch.tensor([1, 2, 3]), 0.5, 0.1)
    with pytest.raises(ValueError, match=r"bsim_infonce_loss: perm must have shape \(3,\)"):
        bsim_infonce_loss(q, q, torch.tensor([1, 0]), 0.5, 0.1)
    with pytest.raises(ValueError, match=r"bsim_infonce_loss: perm must be an integer tensor"):
        bsim_infonce_loss(q, q, torch.tensor([1.0, 2.0, 0.0]), 0.5, 0.1)
    with pytest.raises(ValueError, match=r"bsim_infonce_loss: temperature must be a finite number > 0"):
        bsim_infonce_loss(q, q, perm, 0.5, 0.0)
    with pytest.raises(ValueError, match=r"bsim_infonce_loss: negatives must have D = 4 columns"):
        bsim_infonce_loss(q, q, perm, 0.5, 0.1, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"bsim_byol_loss: lam must be a number or a tensor of shape"):
        bsim_byol_loss(q, q, perm, torch.rand(2))
    with pytest.raises(ValueError, match=r"bsim_byol_loss: z_target must have the same shape as p_mix"):
        bsim_byol_loss(q, torch.randn(3, 2), perm, 0.5)
