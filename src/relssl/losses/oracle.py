"""Label-oracle controls of the contrastive losses (issue #13): the upper bound a false-negative
method should approach.

**These functions train on class labels.** They exist to measure how much the false negatives
of instance discrimination cost, never as a self-supervised method. Each one is the plain loss
of the same name with the *false negatives* -- candidates in the denominator that share the
anchor's class but are not its positive -- handled one of two ways (``mode``):

* ``"remove"``: dropped from the softmax denominator (their logits set to -inf), so each row is
  ``-log( e^{s_pos} / (e^{s_pos} + sum_{true negatives} e^{s_neg}) )``;
* ``"positive"``: made positives, averaged like SupCon's L_out:
  ``-(1/|P_i|) sum_{p in P_i} log softmax_i(p)``, with ``P_i`` = the positive + the false
  negatives, over the full denominator.

A label < 0 is "unknown" (e.g. a queue row never written) and never counts as a false
negative. With all labels distinct (or unknown) every function equals its plain loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from relssl.losses._common import (
    check_choice,
    check_matrix,
    check_positive,
    check_same_shape,
    compute_dtype,
    fail,
    full_precision,
    l2n,
    reduce,
)
from relssl.losses.contrastive import _moco_logits, _ntxent_logits, check_query_key_queue

__all__ = ["ORACLE_MODES", "same_class", "masked_infonce", "oracle_ntxent_loss", "oracle_moco_loss",
           "oracle_nnclr_loss", "oracle_pnnclr_loss"]

ORACLE_MODES = ("remove", "positive")


def same_class(row_labels: Tensor, col_labels: Tensor) -> Tensor:
    """(N, M) bool: row and column labels equal and both known (>= 0)."""
    r = row_labels.long().view(-1, 1)
    c = col_labels.to(r.device).long().view(1, -1)
    return (r == c) & (r >= 0) & (c >= 0)


def _check_labels(fn: str, name: str, labels: Tensor, n: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise fail(fn, f"{name} must be a 1-d tensor of {n} class labels, got {shape}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise fail(fn, f"{name} must hold integer class labels, got dtype {labels.dtype}")
    return labels


def masked_infonce(logits: Tensor, positives: Tensor, false_negatives: Tensor, mode: str = "remove",
                   reduction: str = "mean") -> Tensor:
    """InfoNCE over the rows of ``logits`` (N, M) with the oracle's handling of ``false_negatives``.

    ``positives`` (N, M) bool: each row's positive(s) (at least one finite logit per row);
    ``false_negatives`` (N, M) bool: same-class candidates (ignored where ``positives`` or where
    the logit is -inf, i.e. not a candidate). Returns the mean (or sum) over rows.
    """
    fn = "masked_infonce"
    check_choice(fn, "mode", mode, ORACLE_MODES)
    if positives.shape != logits.shape or false_negatives.shape != logits.shape:
        raise fail(fn, f"positives and false_negatives must have the logits' shape {tuple(logits.shape)}, "
                       f"got {tuple(positives.shape)} and {tuple(false_negatives.shape)}")
    candidate = torch.isfinite(logits)
    pos = positives & candidate
    fneg = false_negatives & candidate & ~pos
    if mode == "remove":
        logits = logits.masked_fill(fneg, float("-inf"))
    else:
        pos = pos | fneg
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_row = -log_p.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1).clamp_min(1)
    return reduce(per_row, reduction)


def _one_hot_rows(targets: Tensor, m: int) -> Tensor:
    return F.one_hot(targets, m).bool()


@full_precision
def oracle_ntxent_loss(z1: Tensor, z2: Tensor, labels: Tensor, temperature: float = 0.5,
                       mode: str = "remove") -> Tensor:
    """:func:`relssl.losses.ntxent_loss` with the same-class candidates of each of the 2N anchors
    removed from the denominator or made positives. ``labels`` (N,): the class of row i of both views."""
    fn = "oracle_ntxent_loss"
    check_matrix(fn, "z1", z1)
    check_matrix(fn, "z2", z2)
    check_same_shape(fn, ("z1", "z2"), (z1, z2))
    tau = check_positive(fn, "temperature", temperature)
    y = _check_labels(fn, "labels", labels, z1.shape[0]).repeat(2)
    logits, targets = _ntxent_logits(z1, z2, tau)
    return masked_infonce(logits, _one_hot_rows(targets, logits.shape[1]), same_class(y, y), mode)


@full_precision
def oracle_moco_loss(q: Tensor, k: Tensor, queue: Tensor, labels: Tensor, queue_labels: Tensor,
                     temperature: float = 0.2, mode: str = "remove") -> Tensor:
    """:func:`relssl.losses.moco_loss` with the queue rows of the query's class removed from the
    denominator or made positives. ``labels`` (N,) of the queries, ``queue_labels`` (K,) of the
    queue rows (-1 = unknown: always a negative)."""
    fn = "oracle_moco_loss"
    check_query_key_queue(fn, q, k, queue)
    tau = check_positive(fn, "temperature", temperature)
    y = _check_labels(fn, "labels", labels, q.shape[0])
    yq = _check_labels(fn, "queue_labels", queue_labels, queue.shape[0])
    logits = _moco_logits(q, k, queue, tau)
    pos = torch.zeros_like(logits, dtype=torch.bool)
    pos[:, 0] = True
    fneg = torch.cat([torch.zeros_like(pos[:, :1]), same_class(y, yq)], dim=1)
    return masked_infonce(logits, pos, fneg, mode)


@full_precision
def oracle_nnclr_loss(nn1: Tensor, nn2: Tensor, p1: Tensor, p2: Tensor, labels: Tensor,
                      temperature: float = 0.1, symmetrize: bool = False, mode: str = "remove") -> Tensor:
    """:func:`relssl.losses.nnclr_loss` given the neighbours ``nn1``, ``nn2`` (N, D) already found
    (constants), with the same-class predictions of each row removed or made positives."""
    fn = "oracle_nnclr_loss"
    for name, t in (("nn1", nn1), ("nn2", nn2), ("p1", p1), ("p2", p2)):
        check_matrix(fn, name, t)
    check_same_shape(fn, ("nn1", "nn2", "p1", "p2"), (nn1, nn2, p1, p2))
    tau = check_positive(fn, "temperature", temperature)
    y = _check_labels(fn, "labels", labels, p1.shape[0])
    dtype = compute_dtype(nn1, nn2, p1, p2)
    eye = torch.eye(p1.shape[0], dtype=torch.bool, device=p1.device)
    fneg = same_class(y, y)

    def term(nn: Tensor, p: Tensor) -> Tensor:
        logits = (l2n(nn.detach(), dtype) @ l2n(p, dtype).T) / tau
        loss = masked_infonce(logits, eye, fneg, mode)
        if symmetrize:
            loss = loss + masked_infonce(logits.T, eye, fneg.T, mode)
        return loss

    return 0.5 * (term(nn1, p2) + term(nn2, p1))


@full_precision
def oracle_pnnclr_loss(a: Tensor, b: Tensor, support: Tensor, labels: Tensor, temperature: float = 0.1,
                       t: float | Tensor = 0.95, reduction: str = "mean", *, mode: str = "remove", topk: int = 1,
                       t_min: float | None = None, noise_std: float | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """One call of :func:`relssl.losses.pnnclr_loss` with, in each of its four B x B blocks, the
    columns of the row's class removed or made positives. ``labels`` (B,) of the samples."""
    from relssl.losses.neighbours import _pnnclr_logits

    fn = "oracle_pnnclr_loss"
    logits, targets = _pnnclr_logits(fn, a, b, support, temperature, t, None, reduction, topk=topk,
                                     t_min=t_min, noise_std=noise_std, generator=generator)
    y = _check_labels(fn, "labels", labels, a.shape[0])
    fneg = same_class(y, y).repeat(4, 1)
    return masked_infonce(logits, _one_hot_rows(targets, logits.shape[1]), fneg, mode, reduction)
