"""Instance-discrimination losses: NT-Xent (SimCLR), MoCo InfoNCE, SupCon, NNCLR.

Specs: docs/methods/simclr.md (NT-Xent), docs/methods/nnclr.md (NNCLR), docs/methods/wcl.md
(SupCon on weak labels) and docs/methods/mocov2.md (MoCo v2).
Notation: ``n(x) = x / ||x||`` over rows; ``sg`` = stop-gradient; ``tau`` = temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from relssl.losses._common import (
    check_bool,
    check_choice,
    check_matrix,
    check_positive,
    check_same_shape,
    compute_dtype,
    fail,
    full_precision,
    l2n,
)

__all__ = ["moco_loss", "ntxent_loss", "supcon_loss", "nnclr_loss"]


# ----------------------------------------------------------------------------------------------
# NT-Xent
# ----------------------------------------------------------------------------------------------


def _ntxent_logits(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """NT-Xent logits (2N, 2N) with -inf on the diagonal, and each row's target column."""
    dtype = compute_dtype(z1, z2)
    n = z1.shape[0]
    z = torch.cat([l2n(z1, dtype), l2n(z2, dtype)], dim=0)  # (2N, D)
    logits = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    return logits, torch.cat([idx + n, idx])


def _ntxent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent on validated inputs (shared with ``wcl_loss``)."""
    return F.cross_entropy(*_ntxent_logits(z1, z2, temperature))


@full_precision
def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    r"""SimCLR NT-Xent loss over the 2N anchors of two views.

    Spec: docs/methods/simclr.md (also WCL's instance term, docs/methods/wcl.md).

    With ``u = [n(z1); n(z2)]`` (2N rows) and ``pos(a) = a + N mod 2N``::

        L = (1 / 2N) * sum_a -log( exp(u_a . u_pos(a) / tau) / sum_{c != a} exp(u_a . u_c / tau) )

    Each anchor sees 2N - 1 candidates: its positive (the same image in the other view) and the
    2N - 2 other embeddings of both views.

    Args:
        z1: ``(N, D)`` embeddings of view 1 (not necessarily normalised).
        z2: ``(N, D)`` embeddings of view 2, row i = same image as ``z1[i]``.
        temperature: ``tau > 0``.

    Returns:
        Scalar, mean over the 2N anchors. Gradient flows into both ``z1`` and ``z2`` (rows and
        columns alike).
    """
    fn = "ntxent_loss"
    check_matrix(fn, "z1", z1)
    check_matrix(fn, "z2", z2)
    check_same_shape(fn, ("z1", "z2"), (z1, z2))
    tau = check_positive(fn, "temperature", temperature)
    return _ntxent(z1, z2, tau)


# ----------------------------------------------------------------------------------------------
# MoCo
# ----------------------------------------------------------------------------------------------


def _moco_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """``[q.k, q Q^T] / tau`` of shape (N, 1 + K); k and the queue are detached."""
    dtype = compute_dtype(q, k, queue)
    qn = l2n(q, dtype)
    kn = l2n(k.detach(), dtype)
    qu = l2n(queue.detach(), dtype)
    pos = (qn * kn).sum(dim=1, keepdim=True)
    neg = qn @ qu.T
    return torch.cat([pos, neg], dim=1) / temperature


def _moco(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo loss on validated inputs (shared with ``ascl_loss(relation="moco")``)."""
    logits = _moco_logits(q, k, queue, temperature)
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, targets)


def check_query_key_queue(fn: str, q: Tensor, k: Tensor, queue: Tensor, min_queue: int = 0) -> None:
    check_matrix(fn, "q", q)
    check_matrix(fn, "k", k)
    check_same_shape(fn, ("q", "k"), (q, k))
    check_matrix(fn, "queue", queue, dim=q.shape[1], min_rows=min_queue)


@full_precision
def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    r"""MoCo (v1/v2) one-sided InfoNCE with the positive key at column 0.

    Spec: docs/methods/mocov2.md.

    ::

        l_i = [ n(q_i) . sg n(k_i),  n(q_i) . sg n(Q_1), ..., n(q_i) . sg n(Q_K) ] / tau   (1 + K logits)
        L   = mean_i CE(one-hot at column 0, softmax(l_i))

    Args:
        q: ``(N, D)`` queries (carry gradient).
        k: ``(N, D)`` keys from the momentum encoder (constant: detached).
        queue: ``(K, D)`` negatives, one key per row, taken **before** this step's keys are
            enqueued (constant: detached). ``K = 0`` is allowed (the loss is then 0).
        temperature: ``tau > 0`` (0.2 for MoCo v2, 0.07 for v1, 0.1 in the CIFAR demo).

    Returns:
        Scalar, mean over the N queries. Gradient flows into ``q`` only.
    """
    fn = "moco_loss"
    check_query_key_queue(fn, q, k, queue)
    tau = check_positive(fn, "temperature", temperature)
    return _moco(q, k, queue, tau)


# ----------------------------------------------------------------------------------------------
# SupCon
# ----------------------------------------------------------------------------------------------

SUPCON_VARIANTS = ("out", "in")


@full_precision
def supcon_loss(features: Tensor, labels: Tensor | None = None, temperature: float = 0.07,
                base_temperature: float = 0.07, variant: str = "out") -> Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020), "all" contrast mode.

    Spec: docs/methods/wcl.md (official ``SupContrast/losses.py``).

    The B*V anchors are the rows of ``u = n(features)`` laid out view-major (view 0 of every
    sample, then view 1, ... as the official ``torch.cat(torch.unbind(features, 1))``). For anchor
    i, ``A(i)`` = all other anchors, ``P(i)`` = those with the same label::

        log p_ip = u_i . u_p / tau - log sum_{a in A(i)} exp(u_i . u_a / tau)
        "out" (paper Eq. 2):  l_i = -(tau / tau_base) * (1 / max(|P(i)|, 1)) * sum_{p in P(i)} log p_ip
        "in"  (paper Eq. 3):  l_i = -(tau / tau_base) * log sum_{p in P(i)} p_ip      (0 if P(i) is empty)
        L = mean over the B*V anchors of l_i

    Anchors without positives contribute 0 and still count in the mean (divided by 1, not 0,
    as the current official code). The ``tau / tau_base`` factor is applied to both variants
    (it is 1 with the defaults); the "in" form is the one solo-learn calls SupCon.

    Args:
        features: ``(B, V, D)``: B samples, V views each.
        labels: ``(B,)`` integer class labels; ``None`` means instance labels (the positives of
            an anchor are the other views of the same sample: SimCLR with V = 2).
        temperature: ``tau > 0``.
        base_temperature: ``tau_base > 0``.
        variant: ``"out"`` or ``"in"``.

    Returns:
        Scalar. Gradient flows into ``features`` (anchors and candidates).
    """
    fn = "supcon_loss"
    if not isinstance(features, Tensor) or not features.is_floating_point():
        raise fail(fn, "features must be a floating-point torch.Tensor of shape (B, V, D)")
    if features.dim() != 3 or min(features.shape) < 1:
        raise fail(fn, f"features must have shape (B, V, D) with B, V, D >= 1, "
                       f"got {tuple(features.shape)}")
    tau = check_positive(fn, "temperature", temperature)
    tau_base = check_positive(fn, "base_temperature", base_temperature)
    check_choice(fn, "variant", variant, SUPCON_VARIANTS)
    b, v, _ = features.shape
    device = features.device
    if labels is None:
        ids = torch.arange(b, device=device)
    else:
        if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise fail(fn, "labels must be None or an integer tensor of shape (B,)")
        if tuple(labels.shape) != (b,):
            raise fail(fn, f"labels must have shape ({b},) to match features, got {tuple(labels.shape)}")
        ids = labels.to(device)

    dtype = compute_dtype(features)
    u = l2n(features, dtype).transpose(0, 1).reshape(v * b, -1)  # view-major (V*B, D)
    lab = ids.repeat(v)
    self_mask = torch.eye(v * b, dtype=torch.bool, device=device)
    pos_mask = (lab[:, None] == lab[None, :]) & ~self_mask
    n_pos = pos_mask.sum(dim=1)
    logits = ((u @ u.T) / tau).masked_fill(self_mask, float("-inf"))
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    if variant == "out":
        log_prob = (logits - log_z).masked_fill(~pos_mask, 0.0)
        per_anchor = log_prob.sum(dim=1) / n_pos.clamp(min=1).to(dtype)
    else:
        has_pos = n_pos > 0
        pos_logits = logits.masked_fill(~pos_mask, float("-inf"))
        # rows without positives get a dummy finite row so logsumexp and its gradient stay finite
        pos_logits = torch.where(has_pos[:, None], pos_logits, torch.zeros_like(pos_logits))
        per_anchor = torch.where(has_pos, torch.logsumexp(pos_logits, dim=1) - log_z[:, 0],
                                 torch.zeros_like(log_z[:, 0]))
    return -(tau / tau_base) * per_anchor.mean()


# ----------------------------------------------------------------------------------------------
# NNCLR
# ----------------------------------------------------------------------------------------------


def nearest_rows(queries: Tensor, bank: Tensor) -> Tensor:
    """Index of the row of ``bank`` with the largest dot product with each query (both normalised)."""
    return (queries @ bank.T).argmax(dim=1)


@full_precision
def nnclr_loss(z1: Tensor, z2: Tensor, p1: Tensor, p2: Tensor, support: Tensor,
               temperature: float = 0.1, symmetrize: bool = False) -> Tensor:
    r"""NNCLR loss: InfoNCE between the support-set nearest neighbour of one view's projection
    and the other view's predictions.

    Spec: docs/methods/nnclr.md (solo-learn ``nnclr_loss_func``).

    ``S = sg n(support)``; ``NN(z)_i = S[argmax_k n(z_i) . S_k]`` (constant)::

        L(nn, p) = mean_i CE(target i, softmax_j( nn_i . n(p_j) / tau ))     rows = NN, columns = predictions
        L_total  = 0.5 * [ L(NN(z1), p2) + L(NN(z2), p1) ]

    With ``symmetrize=True`` each ``L(nn, p)`` becomes ``L(nn, p) + L^T(nn, p)``, where ``L^T``
    is the same CE on the transposed logits (rows = predictions, columns = NN), the term the
    NNCLR paper *adds* to symmetrise; the value is then about twice as large.

    Args:
        z1, z2: ``(N, D)`` projections of views 1 and 2, used only to search ``support``
            (no gradient reaches them).
        p1, p2: ``(N, D)`` predictions of views 1 and 2 (carry gradient).
        support: ``(K, D)`` support set (FIFO queue of projections), constant, ``K >= 1``.
        temperature: ``tau > 0``.
        symmetrize: add the transposed term.

    Returns:
        Scalar. Gradient flows into ``p1`` and ``p2`` only.
    """
    fn = "nnclr_loss"
    for name, t in (("z1", z1), ("z2", z2), ("p1", p1), ("p2", p2)):
        check_matrix(fn, name, t)
    check_same_shape(fn, ("z1", "z2", "p1", "p2"), (z1, z2, p1, p2))
    check_matrix(fn, "support", support, dim=z1.shape[1])
    tau = check_positive(fn, "temperature", temperature)
    check_bool(fn, "symmetrize", symmetrize)

    dtype = compute_dtype(z1, z2, p1, p2, support)
    s = l2n(support.detach(), dtype)
    nn1 = s[nearest_rows(l2n(z1.detach(), dtype), s)]
    nn2 = s[nearest_rows(l2n(z2.detach(), dtype), s)]
    targets = torch.arange(z1.shape[0], device=z1.device)

    def term(nn: Tensor, p: Tensor) -> Tensor:
        logits = (nn @ l2n(p, dtype).T) / tau
        loss = F.cross_entropy(logits, targets)
        if symmetrize:
            loss = loss + F.cross_entropy(logits.T, targets)
        return loss

    return 0.5 * (term(nn1, p2) + term(nn2, p1))
