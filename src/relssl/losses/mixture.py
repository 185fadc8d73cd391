"""BSIM (beyond single-instance multi-view): mixture-view losses.

Spec: docs/methods/bsim.md. **Reconstructed from the abstract only; no
official code exists and the loss is unverified against the paper** (docs/methods/bsim.md).
``n(x) = x / ||x||`` over rows, ``sg`` = stop-gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from relssl.losses._common import (
    check_bool,
    check_fraction,
    check_index,
    check_matrix,
    check_positive,
    check_same_shape,
    compute_dtype,
    full_precision,
    l2n,
)

__all__ = ["bsim_infonce_loss", "bsim_byol_loss"]


@full_precision
def bsim_infonce_loss(q_mix: Tensor, keys: Tensor, perm: Tensor, lam: float | Tensor,
                      temperature: float, negatives: Tensor | None = None, *,
                      detach_keys: bool = True) -> Tensor:
    r"""BSIM soft-target InfoNCE of each mixture against its two sources (contrastive hosts).

    Spec: docs/methods/bsim.md (reconstructed, unverified). The
    mixture ``x_m,i = lam_i x_i + (1 - lam_i) x_perm[i]`` is encoded by the online/query branch::

        C = [sg n(keys); sg n(negatives)]                 (N + K candidates)
        log p_i(c) = log_softmax_c( n(q_mix_i) . C_c / tau )
        L = mean_i -[ lam_i log p_i(i) + (1 - lam_i) log p_i(perm[i]) ]

    ``lam = 1`` is the host's positive term, CE with a one-hot target on key i.

    Args:
        q_mix: ``(N, D)`` embeddings of the mixtures (carry gradient).
        keys: ``(N, D)`` clean key / positive embeddings, row i = source image i.
        perm: ``(N,)`` integer partner index (values in [0, N)): mixture i's second source.
        lam: mixing weight of source i in [0, 1]: a number or a tensor of shape ``()`` / ``(N,)``.
        temperature: ``tau > 0`` (no default: the host's temperature).
        negatives: optional ``(K, D)`` extra candidates, e.g. the MoCo queue (constant).
        detach_keys: keyword-only; True (default) treats ``keys`` as constants (MoCo keys come
            from the momentum encoder); False lets gradient flow into ``keys`` (a SimCLR host
            whose keys come from the online encoder, if wanted).

    Returns:
        Scalar, mean over the N mixtures. Gradient flows into ``q_mix`` (and ``keys`` if
        ``detach_keys=False``).
    """
    fn = "bsim_infonce_loss"
    check_matrix(fn, "q_mix", q_mix)
    check_matrix(fn, "keys", keys)
    check_same_shape(fn, ("q_mix", "keys"), (q_mix, keys))
    n = q_mix.shape[0]
    idx = check_index(fn, "perm", perm, n, n).to(q_mix.device)
    tau = check_positive(fn, "temperature", temperature)
    if negatives is not None:
        check_matrix(fn, "negatives", negatives, dim=q_mix.shape[1], min_rows=0)
    check_bool(fn, "detach_keys", detach_keys)
    dtype = compute_dtype(q_mix, keys, negatives)
    lam_col = check_fraction(fn, "lam", lam, n, dtype, q_mix.device)

    cand = l2n(keys.detach() if detach_keys else keys, dtype)
    if negatives is not None:
        cand = torch.cat([cand, l2n(negatives.detach(), dtype)], dim=0)
    log_p = F.log_softmax((l2n(q_mix, dtype) @ cand.T) / tau, dim=1)
    rows = torch.arange(n, device=q_mix.device)
    lam_v = lam_col[:, 0]
    per_row = -(lam_v * log_p[rows, rows] + (1.0 - lam_v) * log_p[rows, idx])
    return per_row.mean()


@full_precision
def bsim_byol_loss(p_mix: Tensor, z_target: Tensor, perm: Tensor, lam: float | Tensor) -> Tensor:
    r"""BSIM mixture regression for a BYOL host.

    Spec: docs/methods/bsim.md (reconstructed, unverified)::

        L = mean_i [ lam_i (2 - 2 cos(p_mix_i, sg z_i)) + (1 - lam_i)(2 - 2 cos(p_mix_i, sg z_perm[i])) ]

    Args:
        p_mix: ``(N, D)`` online predictions of the mixtures (carry gradient).
        z_target: ``(N, D)`` target (EMA) projections of the clean sources (constant).
        perm: ``(N,)`` integer partner index in [0, N).
        lam: weight of source i in [0, 1]: a number or a tensor of shape ``()`` / ``(N,)``.

    Returns:
        Scalar. Gradient flows into ``p_mix`` only.
    """
    fn = "bsim_byol_loss"
    check_matrix(fn, "p_mix", p_mix)
    check_matrix(fn, "z_target", z_target)
    check_same_shape(fn, ("p_mix", "z_target"), (p_mix, z_target))
    n = p_mix.shape[0]
    idx = check_index(fn, "perm", perm, n, n).to(p_mix.device)
    dtype = compute_dtype(p_mix, z_target)
    lam_v = check_fraction(fn, "lam", lam, n, dtype, p_mix.device)[:, 0]
    p = l2n(p_mix, dtype)
    z = l2n(z_target.detach(), dtype)
    own = 2.0 - 2.0 * (p * z).sum(dim=1)
    partner = 2.0 - 2.0 * (p * z[idx]).sum(dim=1)
    return (lam_v * own + (1.0 - lam_v) * partner).mean()
