"""Relational / soft-target losses: MSVQ (multiple sample views and queues) and ASCL (adaptive
soft contrastive learning).

Spec: docs/methods/msvq.md (MSVQ) and docs/methods/ascl.md (ASCL). ``n(x) = x / ||x||`` over rows,
``sg`` = stop-gradient, ``CE(P, Q) = -sum_j P_j log Q_j`` per row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from relssl.losses._common import (
    check_choice,
    check_int,
    check_matrix,
    check_positive,
    check_same_shape,
    compute_dtype,
    fail,
    full_precision,
    l2n,
    drop_diagonal,
    with_diagonal,
)
from relssl.losses.contrastive import _moco, _moco_logits, check_query_key_queue

__all__ = ["msvq_loss", "relation_ce", "relation_targets", "ascl_targets", "ascl_loss", "ascl_byol_loss"]


# ----------------------------------------------------------------------------------------------
# MSVQ
# ----------------------------------------------------------------------------------------------


@full_precision
def msvq_loss(z1: Tensor, z2: Tensor, z3: Tensor, z4: Tensor, queue1: Tensor, queue2: Tensor,
              tau_t: float = 0.04, tau_s: float = 0.1) -> Tensor:
    r"""MSVQ loss: the mean of three teacher-to-student relation cross-entropies.

    Spec: docs/methods/msvq.md (official ``MSVQ.contrastive_loss``).

    ``Q1 = sg n(queue1)``, ``Q2 = sg n(queue2)`` (the queues *before* this step's enqueue)::

        S1 = n(z1) Q1^T,  S2 = n(z1) Q2^T                               (N x K1, N x K2; student)
        P_a = softmax(sg n(z2) Q1^T / tau_t),  P_b = softmax(sg n(z3) Q1^T / tau_t),
        P_c = softmax(sg n(z4) Q2^T / tau_t)                            (teachers, constant)
        L = (1/3) [ CE(P_a, softmax(S1 / tau_s)) + CE(P_b, softmax(S1 / tau_s))
                    + CE(P_c, softmax(S2 / tau_s)) ],   each CE a mean over the N rows

    CE (not KL): same gradient, the value is higher by the teacher entropy.

    Args:
        z1: ``(N, D)`` student embedding of the strong view (carries gradient).
        z2, z3: ``(N, D)`` teacher-1 embeddings of weak views 2 and 3 (constant).
        z4: ``(N, D)`` teacher-2 embedding of weak view 4 (constant).
        queue1: ``(K1, D)`` teacher-1 queue; queue2: ``(K2, D)`` teacher-2 queue (constant).
        tau_t: teacher temperature > 0 (0.04; 0.03 for CIFAR-100).
        tau_s: student temperature > 0 (0.1).

    Returns:
        Scalar. Gradient flows into ``z1`` only.
    """
    fn = "msvq_loss"
    for name, t in (("z1", z1), ("z2", z2), ("z3", z3), ("z4", z4)):
        check_matrix(fn, name, t)
    check_same_shape(fn, ("z1", "z2", "z3", "z4"), (z1, z2, z3, z4))
    check_matrix(fn, "queue1", queue1, dim=z1.shape[1])
    check_matrix(fn, "queue2", queue2, dim=z1.shape[1])
    t_t = check_positive(fn, "tau_t", tau_t)
    t_s = check_positive(fn, "tau_s", tau_s)

    dtype = compute_dtype(z1, z2, z3, z4, queue1, queue2)
    q1 = l2n(queue1.detach(), dtype)
    q2 = l2n(queue2.detach(), dtype)
    s = l2n(z1, dtype)
    log_s1 = F.log_softmax((s @ q1.T) / t_s, dim=1)
    log_s2 = F.log_softmax((s @ q2.T) / t_s, dim=1)
    p_a, p_b = relation_targets(z2.detach(), q1, t_t), relation_targets(z3.detach(), q1, t_t)
    p_c = relation_targets(z4.detach(), q2, t_t)
    ce_a = -(p_a * log_s1).sum(dim=1).mean()
    ce_b = -(p_b * log_s1).sum(dim=1).mean()
    ce_c = -(p_c * log_s2).sum(dim=1).mean()
    return (ce_a + ce_b + ce_c) / 3.0


@full_precision
@torch.no_grad()
def relation_targets(z_teacher: torch.Tensor, queue: torch.Tensor, tau_t: float) -> torch.Tensor:
    """Soft label ``softmax(n(z_t) n(Q)^T / tau_t)`` over the K queue rows, (N, K), no gradient."""
    dtype = compute_dtype(z_teacher, queue)
    return F.softmax(l2n(z_teacher, dtype) @ l2n(queue, dtype).T / tau_t, dim=1)


@full_precision
def relation_ce(z_student: torch.Tensor, z_teacher: torch.Tensor, queue: torch.Tensor,
                tau_t: float = 0.04, tau_s: float = 0.1) -> torch.Tensor:
    """One relation term: ``CE(softmax(n(z_t) Q^T / tau_t), softmax(n(z_s) Q^T / tau_s))``, mean over rows.

    ``Q = n(queue)`` is a constant; gradient flows into ``z_student`` only. This is ReSSL's loss
    and each of the three terms of :func:`msvq_loss` (which is the mean of three such terms).
    """
    dtype = compute_dtype(z_student, z_teacher, queue)
    q = l2n(queue.detach(), dtype)
    log_s = F.log_softmax(l2n(z_student, dtype) @ q.T / tau_s, dim=1)
    p = relation_targets(z_teacher.detach(), q, tau_t)
    return -(p * log_s).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------
# ASCL
# ----------------------------------------------------------------------------------------------

ASCL_RELATIONS = ("ascl", "ahcl", "hard", "moco")


def _confidence(logits: Tensor, log_k: float) -> tuple[Tensor, Tensor]:
    """Softmax ``p`` of ``logits`` over the last axis and the confidence
    ``c = 1 - H(p) / log K`` clamped to [0, 1] (the clamp only removes rounding)."""
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(dim=1)
    c = (1.0 - entropy / log_k).clamp(0.0, 1.0)
    return p, c


def _check_ascl_args(fn: str, k: Tensor, queue: Tensor, t2: float, nn_num: int,
                     relation: str) -> tuple[float, int]:
    check_choice(fn, "relation", relation, ASCL_RELATIONS)
    tau2 = check_positive(fn, "t2", t2)
    kq = queue.shape[0]
    if relation in ("ascl", "ahcl") and kq < 2:
        raise fail(fn, f"queue must have K >= 2 rows for relation {relation!r} "
                       f"(confidence divides by log K), got shape {tuple(queue.shape)}")
    high = kq if relation in ("ahcl", "hard") else None
    num = check_int(fn, "nn_num", nn_num, 1, high)
    return tau2, num


def _ascl_targets(k: Tensor, queue: Tensor, t2: float, nn_num: int, relation: str,
                  dtype: torch.dtype) -> Tensor:
    n, kq = k.shape[0], queue.shape[0]
    with torch.no_grad():
        if relation == "moco":
            w = torch.zeros(n, kq, dtype=dtype, device=k.device)
        else:
            s = (l2n(k.detach(), dtype) @ l2n(queue.detach(), dtype).T) / t2  # (N, K)
            if relation == "ascl":
                p, c = _confidence(s, math.log(kq))
                w = (nn_num * c[:, None] * p).clamp(max=1.0)
            else:
                top = s.topk(nn_num, dim=1).indices
                w = torch.zeros_like(s).scatter_(1, top, 1.0)
                if relation == "ahcl":
                    _, c = _confidence(s, math.log(kq))
                    w = c[:, None] * w
        y = torch.cat([torch.ones(n, 1, dtype=dtype, device=k.device), w], dim=1)
        return y / y.sum(dim=1, keepdim=True)


@full_precision
def ascl_targets(k: Tensor, queue: Tensor, t2: float = 0.05, nn_num: int = 1,
                 relation: str = "ascl") -> Tensor:
    r"""ASCL soft targets over ``[positive key, queue]``, shape (N, 1 + K).

    Spec: docs/methods/ascl.md (official ``ASCL._forward_moco``).

    ``s = sg n(k) sg n(Q)^T / t2`` (N x K), ``p = softmax(s)`` per row,
    ``c = 1 - H(p) / log K`` (confidence in [0, 1]; 0 for a uniform p, 1 for a one-hot p)::

        "ascl": w = min(nn_num * c * p, 1)              elementwise
        "ahcl": w = c * onehot(the nn_num largest s)
        "hard": w = onehot(the nn_num largest s)
        "moco": w = 0                                   (plain MoCo target, called "normal" in the code)
        y = [1, w_1, ..., w_K] / (1 + sum_j w_j)

    Rows sum to 1. A key whose queue similarities are uniform gets ``c = 0`` and falls back to
    the one-hot instance target. ``c`` is clamped to [0, 1] to remove rounding (|error| ~ 1e-7).

    Args:
        k: ``(N, D)`` keys (momentum encoder; constant).
        queue: ``(K, D)`` queue before this step's enqueue (constant); ``K >= 2`` for "ascl" and
            "ahcl".
        t2: sharpening temperature > 0 of the key-to-queue softmax.
        nn_num: neighbour multiplier (int >= 1; for "ahcl"/"hard" the number of neighbours,
            ``<= K``).
        relation: ``"ascl"``, ``"ahcl"``, ``"hard"`` or ``"moco"``.

    Returns:
        ``(N, 1 + K)`` tensor without gradient, in float32 (float64 for float64 inputs).
    """
    fn = "ascl_targets"
    check_matrix(fn, "k", k)
    check_matrix(fn, "queue", queue, dim=k.shape[1], min_rows=0)
    tau2, num = _check_ascl_args(fn, k, queue, t2, nn_num, relation)
    return _ascl_targets(k, queue, tau2, num, relation, compute_dtype(k, queue))


@full_precision
def ascl_loss(q: Tensor, k: Tensor, queue: Tensor, t1: float = 0.1, t2: float = 0.05,
              nn_num: int = 1, relation: str = "ascl") -> Tensor:
    r"""ASCL loss (MoCo form): soft-target cross-entropy over ``[positive key, queue]``.

    Spec: docs/methods/ascl.md::

        l_i = [ n(q_i) . sg n(k_i),  n(q_i) . sg n(Q)^T ] / t1          (1 + K logits)
        L   = mean_i -sum_j y_ij log softmax(l_i)_j,    y = ascl_targets(k, queue, t2, nn_num, relation)

    ``relation="moco"`` is computed by the same code as :func:`moco_loss` and equals
    ``moco_loss(q, k, queue, temperature=t1)`` exactly.

    Args:
        q: ``(N, D)`` queries (carry gradient).
        k: ``(N, D)`` keys (constant).
        queue: ``(K, D)`` queue before this step's enqueue (constant).
        t1: temperature > 0 of the query logits.
        t2, nn_num, relation: as in :func:`ascl_targets`.

    Returns:
        Scalar, mean over the N queries. Gradient flows into ``q`` only.
    """
    fn = "ascl_loss"
    check_query_key_queue(fn, q, k, queue)
    tau1 = check_positive(fn, "t1", t1)
    tau2, num = _check_ascl_args(fn, k, queue, t2, nn_num, relation)
    if relation == "moco":
        return _moco(q, k, queue, tau1)
    logits = _moco_logits(q, k, queue, tau1)
    y = _ascl_targets(k, queue, tau2, num, relation, logits.dtype)
    return -(y * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@full_precision
def ascl_byol_loss(h: Tensor, k: Tensor, t2: float = 0.05, nn_num: int = 1) -> Tensor:
    r"""ASCL loss, BYOL form: batch-internal soft regression targets (no queue).

    Spec: docs/methods/ascl.md, "BYOL variant" (official ``_forward_byol``).

    ``kn = sg n(k)``; for row i, the N - 1 other keys ``j != i``::

        p_ij = softmax_{j != i}( kn_i . kn_j / t2 ),   c_i = 1 - H(p_i) / log(N - 1)
        y_ii = 1,  y_ij = min(nn_num * c_i * p_ij, 1) (j != i),  then y_i /= sum_j y_ij
        L = mean_i [ 2 - 2 sum_j y_ij  n(h_i) . kn_j ]

    The official function returns the per-sample vector; this returns its batch mean.

    Args:
        h: ``(N, D)`` online predictions (carry gradient).
        k: ``(N, D)`` target projections (constant), ``N >= 3``.
        t2: sharpening temperature > 0.
        nn_num: neighbour multiplier, int >= 1.

    Returns:
        Scalar. Gradient flows into ``h`` only.
    """
    fn = "ascl_byol_loss"
    check_matrix(fn, "h", h)
    check_matrix(fn, "k", k, min_rows=3)
    check_same_shape(fn, ("h", "k"), (h, k))
    tau2 = check_positive(fn, "t2", t2)
    num = check_int(fn, "nn_num", nn_num, 1)
    n = h.shape[0]
    dtype = compute_dtype(h, k)
    kn = l2n(k.detach(), dtype)
    with torch.no_grad():
        s = drop_diagonal(kn @ kn.T) / tau2  # (N, N - 1): row i without column i
        p, c = _confidence(s, math.log(n - 1))
        w = (num * c[:, None] * p).clamp(max=1.0)
        y = with_diagonal(w, 1.0)
        y = y / y.sum(dim=1, keepdim=True)
    sim = l2n(h, dtype) @ kn.T  # (N, N)
    return (2.0 - 2.0 * (y * sim).sum(dim=1)).mean()
