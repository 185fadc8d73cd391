"""pNNCLR: stochastic pseudo nearest neighbours.

Spec: docs/methods/pnnclr.md (official ``mb16biswas/pnnclr``,
``Pretraining_SSL.ipynb``, class ``PNNCLR``). ``n(x) = x / ||x||`` over rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from relssl.losses._common import (
    REDUCTIONS,
    check_choice,
    check_fraction,
    check_int,
    check_matrix,
    check_noise,
    check_nonnegative,
    check_positive,
    check_same_shape,
    compute_dtype,
    fail,
    full_precision,
    l2n,
    reduce,
)

__all__ = ["pseudo_nn", "pnnclr_loss"]


def _draw(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          dtype: torch.dtype | None = None, high: int | None = None, normal: bool = False) -> Tensor:
    """Uniform [0, 1) floats (``high=None``), standard normal floats (``normal=True``) or ints in
    [0, high), drawn with ``generator`` on its device and moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    if normal:
        out = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    elif high is None:
        out = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype)
    else:
        out = torch.randint(high, shape, generator=generator, device=gen_device)
    return out.to(device)


def _pseudo_nn(qn: Tensor, s: Tensor, t_col: Tensor, noise: Tensor | None, topk: int,
               generator: torch.Generator | None) -> Tensor:
    """pNN on validated, normalised inputs: ``(1 - t) qn + t S[idx]`` (+ noise)."""
    with torch.no_grad():
        scores = qn.detach() @ s.T
        if topk == 1:
            idx = scores.argmax(dim=1)
        else:
            top = scores.topk(topk, dim=1).indices  # (N, topk)
            pick = _draw((qn.shape[0], 1), generator, qn.device, high=topk)
            idx = top.gather(1, pick)[:, 0]
    out = (1.0 - t_col) * qn + t_col * s[idx]
    if noise is not None:
        out = out + noise.detach().to(device=out.device, dtype=out.dtype)
    return out


def _check_generator(fn: str, generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise fail(fn, f"generator must be None or a torch.Generator, got {type(generator).__name__}")


@full_precision
def pseudo_nn(q: Tensor, support: Tensor, t: float | Tensor = 0.95, noise: Tensor | None = None,
              *, topk: int = 1, generator: torch.Generator | None = None) -> Tensor:
    r"""pNNCLR pseudo nearest neighbour of each query in the support set.

    Spec: docs/methods/pnnclr.md, "Pseudo-NN"::

        u = n(q),  S = sg n(support),  NN(u)_i = S[argmax_k u_i . S_k]      (constant)
        pNN(u) = (1 - t) * u + t * NN(u)   (+ noise)

    The point lies on the chord from the query to its NN, ``1 - t`` of the way back towards the
    query; it is **not** re-normalised (its norm is below 1). The gradient reaches ``q`` only
    through ``(1 - t) * n(q)`` (the normalisation Jacobian scaled by ``1 - t``); there is no
    straight-through estimator. The official code's ``tf.linspace(u, NN, 21)[19]`` is t = 0.95.

    Args:
        q: ``(N, D)`` queries (carry gradient).
        support: ``(K, D)`` support set (constant).
        t: interpolation weight in [0, 1]: a number, or a tensor of shape ``()``, ``(N,)`` or
            ``(N, 1)`` for a per-sample t (constant). ``t = 1`` gives the plain NN.
        noise: ``None`` or a tensor broadcastable to ``(N, D)`` added to the result (constant),
            e.g. ``0.1 * torch.randn(N, D)``; one independent draw per call in the official code.
        topk: keyword-only extension (not in the official code, unverified against the paper):
            with ``topk > 1`` the neighbour is drawn uniformly among the ``topk`` nearest rows.
            Default 1 = the hard NN.
        generator: keyword-only ``torch.Generator`` for the ``topk > 1`` draw.

    Returns:
        ``(N, D)`` tensor in float32 (float64 for float64 inputs).
    """
    fn = "pseudo_nn"
    check_matrix(fn, "q", q)
    check_matrix(fn, "support", support, dim=q.shape[1])
    k = check_int(fn, "topk", topk, 1, support.shape[0])
    _check_generator(fn, generator)
    n = q.shape[0]
    if noise is not None:
        check_noise(fn, "noise", noise, tuple(q.shape))
    dtype = compute_dtype(q, support)
    t_col = check_fraction(fn, "t", t, n, dtype, q.device)
    return _pseudo_nn(l2n(q, dtype), l2n(support.detach(), dtype), t_col, noise, k, generator)


@full_precision
def pnnclr_loss(a: Tensor, b: Tensor, support: Tensor, temperature: float = 0.1,
                t: float | Tensor = 0.95, noises: Sequence[Tensor | None] | None = None,
                reduction: str = "mean", *, topk: int = 1, t_min: float | None = None,
                noise_std: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    r"""One call ``C(a, b; support)`` of the pNNCLR contrastive loss: four blocks, 4B rows.

    Spec: docs/methods/pnnclr.md, "Contrastive call". With
    ``A = n(a)``, ``Bn = sg n(b)`` and ``pNN`` as in :func:`pseudo_nn` (recomputed per block)::

        S1 = pNN(A)  Bn^T,   S2 = Bn pNN(A)^T,   S3 = pNN(Bn) A^T,   S4 = A pNN(Bn)^T     (each B x B) / tau
        C  = per-row CE of the 4B rows [S1; S2; S3; S4] with target = the row's diagonal index
        L  = mean(C)  (reduction="mean")   or   sum(C)  (reduction="sum", what TF differentiates)

    The step loss is ``0.5 * pnnclr_loss(p1, zt2, Q) + 0.5 * pnnclr_loss(p2, zt1, Q')`` with
    ``Q'`` = Q after pushing ``n(p1)`` to its front (the method's bookkeeping, not this
    function's).

    Args:
        a: ``(B, D)`` online predictions (carry gradient).
        b: ``(B, D)`` target projections (constant: the official target branch is off the tape).
        support: ``(K, D)`` support set of normalised predictions (constant).
        temperature: ``tau > 0``.
        t: pNN interpolation weight in [0, 1] (a number or a per-sample tensor, see
            :func:`pseudo_nn`); with ``t_min`` given, the upper end of its range.
        noises: ``None`` or a sequence of 4 entries, one per block S1..S4 (tensors broadcastable
            to ``(B, D)``, or ``None`` for no noise in that block); a ``(4, B, D)`` tensor is
            split along its first axis.
        reduction: ``"mean"`` or ``"sum"`` over the 4B rows.
        topk: keyword-only extension: draw the neighbour among the ``topk`` nearest (default 1,
            the official hard NN).
        t_min: keyword-only extension: if given, every pNN call draws a per-sample
            ``t_i ~ U[t_min, t]`` (``t`` must then be a number). Default None: t is fixed.
        noise_std: keyword-only convenience for the official ``noise=True`` flag (``noise_val``
            0.1): draw the 4 block noises as independent ``N(0, noise_std^2)`` tensors of shape
            ``(B, D)`` with ``generator``. Exclusive with ``noises``. Default None: no noise.
        generator: keyword-only ``torch.Generator`` for the ``topk`` / ``t_min`` / ``noise_std``
            draws. (``topk`` and ``t_min`` are the paper's "stochastic sampling" wording, unverified.)

    Returns:
        Scalar. Gradient flows into ``a`` only.
    """
    logits, targets = _pnnclr_logits("pnnclr_loss", a, b, support, temperature, t, noises, reduction, topk=topk,
                                     t_min=t_min, noise_std=noise_std, generator=generator)
    per_row = F.cross_entropy(logits, targets, reduction="none")
    return reduce(per_row, reduction)


def _pnnclr_logits(fn: str, a: Tensor, b: Tensor, support: Tensor, temperature: float,
                   t: float | Tensor, noises: Sequence[Tensor | None] | None, reduction: str, *, topk: int,
                   t_min: float | None, noise_std: float | None,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Validate the arguments of a pNNCLR call; return its logits (4B, B) and targets (4B,).

    Row r of block ``r // B`` is sample ``r % B``; its target is column ``r % B`` (shared with
    the label-oracle control in ``relssl.losses.oracle``)."""
    check_matrix(fn, "a", a)
    check_matrix(fn, "b", b)
    check_same_shape(fn, ("a", "b"), (a, b))
    check_matrix(fn, "support", support, dim=a.shape[1])
    tau = check_positive(fn, "temperature", temperature)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    k = check_int(fn, "topk", topk, 1, support.shape[0])
    _check_generator(fn, generator)
    n = a.shape[0]
    shape = tuple(a.shape)
    dtype = compute_dtype(a, b, support)
    t_col = check_fraction(fn, "t", t, n, dtype, a.device)
    if t_min is not None:
        if isinstance(t, Tensor):
            raise fail(fn, "t must be a number when t_min is given (t is then the upper end)")
        lo = float(check_fraction(fn, "t_min", t_min, 1, torch.float64, torch.device("cpu")))
        if lo > float(t):
            raise fail(fn, f"t_min must be <= t, got t_min={t_min!r} and t={t!r}")
    if noise_std is not None:
        if noises is not None:
            raise fail(fn, "give noises or noise_std, not both")
        std = check_nonnegative(fn, "noise_std", noise_std)
        block_noise: list[Tensor | None] = [
            std * _draw(shape, generator, a.device, dtype=dtype, normal=True) for _ in range(4)]
    elif noises is None:
        block_noise = [None] * 4
    else:
        if isinstance(noises, Tensor) and noises.dim() >= 1 and noises.shape[0] == 4:
            noises = list(noises.unbind(0))
        if isinstance(noises, Tensor) or not isinstance(noises, Sequence) or len(noises) != 4:
            raise fail(fn, "noises must be None or a sequence of 4 tensors (one per block)")
        block_noise = [None if x is None else check_noise(fn, f"noises[{i}]", x, shape)
                       for i, x in enumerate(noises)]

    an = l2n(a, dtype)
    bn = l2n(b.detach(), dtype)
    s = l2n(support.detach(), dtype)

    def pnn(u: Tensor, block: int) -> Tensor:
        tc = t_col
        if t_min is not None:
            tc = lo + (float(t) - lo) * _draw((n, 1), generator, a.device, dtype=dtype)
        return _pseudo_nn(u, s, tc, block_noise[block], k, generator)

    s1 = pnn(an, 0) @ bn.T
    s2 = bn @ pnn(an, 1).T
    s3 = pnn(bn, 2) @ an.T
    s4 = an @ pnn(bn, 3).T
    logits = torch.cat([s1, s2, s3, s4], dim=0) / tau
    return logits, torch.arange(n, device=a.device).repeat(4)
