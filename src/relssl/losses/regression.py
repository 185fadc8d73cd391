"""Non-contrastive regression losses: BYOL and MSF (mean shift).

Specs: docs/methods/byol.md (BYOL) and docs/methods/msf.md (MSF). ``n(x) = x / ||x||`` over rows, ``sg`` = stop-gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from relssl.losses._common import (
    REDUCTIONS,
    check_choice,
    check_int,
    check_matrix,
    check_same_shape,
    compute_dtype,
    full_precision,
    l2n,
    reduce,
)

__all__ = ["byol_regression", "byol_loss", "msf_loss"]


def _regression_rows(p: Tensor, z: Tensor) -> Tensor:
    """Per-row ``2 - 2 cos(p_i, sg z_i)``, shape (N,)."""
    dtype = compute_dtype(p, z)
    return 2.0 - 2.0 * (l2n(p, dtype) * l2n(z.detach(), dtype)).sum(dim=1)


@full_precision
def byol_regression(p: Tensor, z: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""One direction of the BYOL loss: ``mean_i [2 - 2 cos(p_i, sg z_i)]``.

    Spec: docs/methods/byol.md. ``2 - 2 cos`` is the squared Euclidean
    distance between the unit vectors ``n(p_i)`` and ``n(z_i)``; it lies in [0, 4].

    Args:
        p: ``(N, D)`` online predictions (carry gradient).
        z: ``(N, D)`` target projections (constant: detached).
        reduction: ``"mean"`` (default) or ``"sum"`` over the N rows (keyword-only).

    Returns:
        Scalar. Gradient flows into ``p`` only.
    """
    fn = "byol_regression"
    check_matrix(fn, "p", p)
    check_matrix(fn, "z", z)
    check_same_shape(fn, ("p", "z"), (p, z))
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    return reduce(_regression_rows(p, z), reduction)


@full_precision
def byol_loss(p1: Tensor, p2: Tensor, zt1: Tensor, zt2: Tensor) -> Tensor:
    r"""Symmetric BYOL loss.

    Spec: docs/methods/byol.md::

        L = mean_i [2 - 2 cos(p1_i, sg zt2_i)] + mean_i [2 - 2 cos(p2_i, sg zt1_i)]

    (a sum of the two directions, each a batch mean, so the value lies in [0, 8]).

    Args:
        p1, p2: ``(N, D)`` online predictions of views 1 and 2 (carry gradient).
        zt1, zt2: ``(N, D)`` target (EMA) projections of views 1 and 2 (constant: detached).

    Returns:
        Scalar. Gradient flows into ``p1`` and ``p2`` only.
    """
    fn = "byol_loss"
    for name, t in (("p1", p1), ("p2", p2), ("zt1", zt1), ("zt2", zt2)):
        check_matrix(fn, name, t)
    check_same_shape(fn, ("p1", "p2", "zt1", "zt2"), (p1, p2, zt1, zt2))
    return _regression_rows(p1, zt2).mean() + _regression_rows(p2, zt1).mean()


@full_precision
def msf_loss(p: Tensor, t: Tensor, bank: Tensor, topk: int = 5) -> Tensor:
    r"""MSF (mean shift) loss: regress the prediction onto the target's top-k bank neighbours.

    Spec: docs/methods/msf.md (official ``MeanShift.forward``).

    ``B = sg n(bank)`` (K rows)::

        NN_i = indices of the topk largest n(t_i) . B_k      (= the topk smallest 2 - 2 n(t_i) . B_k)
        L    = mean_i (1 / topk) sum_{j in NN_i} (2 - 2 n(p_i) . B_j)

    The bank is searched **as given**. In the official order this step's normalised targets
    have already been enqueued, so each target finds itself first and ``topk=1`` is BYOL's
    ``2 - 2 cos(p, t)``. (The pc-cp re-implementation searches the pre-update bank and adds
    the target explicitly; that is a different loss, not this one.)

    Args:
        p: ``(N, D)`` online predictions (carry gradient).
        t: ``(N, D)`` target embeddings, used only to choose neighbours (constant).
        bank: ``(K, D)`` memory bank of target embeddings (constant).
        topk: number of neighbours, ``1 <= topk <= K``.

    Returns:
        Scalar. Gradient flows into ``p`` only.
    """
    fn = "msf_loss"
    check_matrix(fn, "p", p)
    check_matrix(fn, "t", t)
    check_same_shape(fn, ("p", "t"), (p, t))
    check_matrix(fn, "bank", bank, dim=p.shape[1])
    k = check_int(fn, "topk", topk, 1, bank.shape[0])
    dtype = compute_dtype(p, t, bank)
    b = l2n(bank.detach(), dtype)
    with torch.no_grad():
        nn_idx = (l2n(t.detach(), dtype) @ b.T).topk(k, dim=1).indices  # (N, topk)
    neighbours = b[nn_idx]  # (N, topk, D)
    cos = torch.einsum("nd,nkd->nk", l2n(p, dtype), neighbours)
    return (2.0 - 2.0 * cos).mean()
