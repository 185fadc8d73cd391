"""WCL (weakly supervised contrastive learning) and its graph helper.

Spec: docs/methods/wcl.md (official ``mingkai-zheng/WCL``,
``network/wcl.py``). ``n(x) = x / ||x||`` over rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from relssl.losses._common import (
    check_bool,
    check_int,
    check_matrix,
    check_nonnegative,
    check_positive,
    check_same_shape,
    compute_dtype,
    fail,
    full_precision,
    l2n,
)
from relssl.losses.contrastive import _ntxent

__all__ = ["connected_components", "nn_graph_labels", "wcl_loss"]


def connected_components(edges_or_nn_index: Tensor, num_nodes: int | None = None) -> Tensor:
    r"""Connected components of an undirected graph, computed on the tensor's device.

    Vectorised (no Python loop over nodes): parent pointers start as ``parent[i] = i``; each
    round hooks, for every edge ``{u, v}``, ``u``, ``parent[u]``, ``v`` and ``parent[v]`` onto
    the smaller of the two parents (``scatter_reduce(amin)``) and then shortcuts
    (``parent = parent[parent]``, pointer jumping) until a round changes nothing. Pointers only
    decrease and always point into the node's own component, so at the fixed point every node
    points at the smallest node of its component. Rounds are few (about log N for 1-NN graphs).

    Args:
        edges_or_nn_index: either a 1-D integer tensor ``nn`` of length N (node ``i`` is linked to
            ``nn[i]``, e.g. a 1-NN index), or an ``(E, 2)`` integer tensor of undirected edges.
            Edge direction is ignored; self-loops and duplicates are allowed.
        num_nodes: number of nodes for the ``(E, 2)`` form (default: largest index + 1). Must be
            N (or None) for the 1-D form.

    Returns:
        ``(N,)`` int64 labels on the input's device, numbered 0, 1, ... in the order of each
        component's smallest node (the numbering of ``scipy.sparse.csgraph.connected_components``).
    """
    fn = "connected_components"
    x = edges_or_nn_index
    if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype.is_complex \
            or x.dtype == torch.bool:
        raise fail(fn, "edges_or_nn_index must be an integer tensor: an (N,) neighbour index "
                       "or an (E, 2) edge list")
    x = x.detach().long()
    if x.dim() == 1:
        n = x.shape[0]
        if num_nodes is not None and num_nodes != n:
            raise fail(fn, f"num_nodes must be None or {n} for an (N,) neighbour index, "
                           f"got {num_nodes!r}")
        u = torch.arange(n, device=x.device)
        v = x
    elif x.dim() == 2 and x.shape[1] == 2:
        u, v = x[:, 0], x[:, 1]
        top = int(x.max()) + 1 if x.numel() else 0
        n = top if num_nodes is None else check_int(fn, "num_nodes", num_nodes, top)
    else:
        raise fail(fn, f"edges_or_nn_index must have shape (N,) or (E, 2), got {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n):
        raise fail(fn, f"node indices must lie in [0, {n}), got min {int(x.min())} "
                       f"and max {int(x.max())}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)

    parent = torch.arange(n, device=x.device)
    while True:
        pu, pv = parent[u], parent[v]
        low = torch.minimum(pu, pv)
        new = parent.clone()
        # hook the trees' roots and the endpoints themselves onto the smaller parent
        for idx in (pu, pv, u, v):
            new.scatter_reduce_(0, idx, low, reduce="amin")
        # pointer jumping until every pointer is a root
        while True:
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, parent):
            break
        parent = new
    return torch.unique(parent, return_inverse=True)[1]


def nn_graph_labels(nn_index: Tensor) -> Tensor:
    r"""Component ids of the graph linking each node ``i`` to ``nn_index[i]``, with no host sync.

    What WCL needs every step, computed in a fixed number of rounds so that nothing waits for the
    device (``connected_components`` loops until a fixed point and renumbers with
    ``torch.unique``: both synchronise a GPU several times per step). Each node has exactly one
    out-edge, so every component holds exactly one cycle (two mutual nearest neighbours in a 1-NN
    graph) and every node reaches it within N steps. With ``K = ceil(log2 N)`` rounds of pointer
    doubling, ``F = f^(2^K)`` takes each node onto its component's cycle and ``M(i) = min`` of the
    ``2^K`` nodes the walk from ``i`` visits covers the whole cycle, so ``M(F(i))`` is the smallest
    node of the component's cycle: the same id for every node of a component, different ids for
    different components.

    Args:
        nn_index: ``(N,)`` integer tensor with values in ``[0, N)`` (not checked: checking would
            synchronise; out-of-range values fail in the gather).

    Returns:
        ``(N,)`` int64 ids on the input's device: equal exactly when two nodes share a component.
        Not numbered 0, 1, ...; use ``connected_components`` for that.
    """
    fn = "nn_graph_labels"
    if not isinstance(nn_index, Tensor) or nn_index.dim() != 1 or nn_index.dtype.is_floating_point \
            or nn_index.dtype.is_complex or nn_index.dtype == torch.bool:
        raise fail(fn, "nn_index must be a 1-D integer tensor (node i is linked to nn_index[i])")
    f = nn_index.detach().long()
    n = f.shape[0]
    low = torch.arange(n, device=f.device)  # M_0(i) = i
    for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):
        low = torch.minimum(low, low[f])  # min over the walk of length 2^(k+1)
        f = f[f]  # f^(2^(k+1))
    return low[f]


def one_nn_index(x: Tensor) -> Tensor:
    """Index of each row's nearest other row by dot product (self excluded), shape (N,)."""
    sim = x @ x.T
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return sim.masked_fill(eye, float("-inf")).argmax(dim=1)


def _graph_labels(b: Tensor) -> Tensor:
    with torch.no_grad():
        return nn_graph_labels(one_nn_index(b.detach()))


def _supcon_within(b: Tensor, labels: Tensor, temperature: float, detach_candidates: bool) -> Tensor:
    """SupCon L_out within one view: anchors = rows of ``b``, candidates = the other rows,
    positives = the other rows with the same label."""
    n = b.shape[0]
    cand = b.detach() if detach_candidates else b
    eye = torch.eye(n, dtype=torch.bool, device=b.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logits = ((b @ cand.T) / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = log_prob.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1).clamp(min=1).to(b.dtype)
    return -per_anchor.mean()


@full_precision
def wcl_loss(a1: Tensor, a2: Tensor, g1: Tensor, g2: Tensor, temperature: float = 0.1,
             graph_weight: float = 1.0, detach_candidates: bool = True) -> Tensor:
    r"""WCL loss: NT-Xent on the instance head plus a graph-label SupCon on the graph head.

    Spec: docs/methods/wcl.md::

        L = ntxent_loss(a1, a2, tau) + graph_weight * 0.5 * [ L_sc(b1, y2) + L_sc(b2, y1) ]

    with ``b_v = n(g_v)`` and ``y_v`` the weak labels of view v: the connected components of the
    undirected graph linking every sample to its nearest other sample by ``b_v . b_v^T``
    (no gradient; every component has >= 2 nodes). Labels are **swapped**: view 2's components
    supervise view 1 and vice versa. ``L_sc`` is SupCon L_out within one view::

        L_sc(b, y) = mean_i -(1 / |P_i|) sum_{p in P_i} log( exp(b_i . b_p / tau) / sum_{j != i} exp(b_i . b_j / tau) )
        P_i = { p != i : y_p = y_i }

    ``detach_candidates=True`` (default, official) differentiates only the anchor rows
    ``b_i``; the candidate copies ``b_p``, ``b_j`` are detached, as the official all-gather is
    ``no_grad``. ``False`` gives the textbook gradient (same value). ``graph_weight=0``
    returns exactly ``ntxent_loss(a1, a2, temperature)``. Single-process form (the official code
    builds the graph over the global batch; pass gathered embeddings to reproduce that).

    Args:
        a1, a2: ``(N, Da)`` instance-head outputs of views 1 and 2.
        g1, g2: ``(N, Dg)`` graph-head outputs of views 1 and 2, ``N >= 2``.
        temperature: ``tau > 0``, shared by both terms (0.1).
        graph_weight: weight >= 0 of the graph term (1 in the official code).
        detach_candidates: see above.

    Returns:
        Scalar. Gradient flows into ``a1``, ``a2`` (all of NT-Xent) and ``g1``, ``g2``.
    """
    fn = "wcl_loss"
    check_matrix(fn, "a1", a1, min_rows=2)
    check_matrix(fn, "a2", a2)
    check_same_shape(fn, ("a1", "a2"), (a1, a2))
    check_matrix(fn, "g1", g1, rows=a1.shape[0])
    check_matrix(fn, "g2", g2)
    check_same_shape(fn, ("g1", "g2"), (g1, g2))
    tau = check_positive(fn, "temperature", temperature)
    weight = check_nonnegative(fn, "graph_weight", graph_weight)
    check_bool(fn, "detach_candidates", detach_candidates)

    instance = _ntxent(a1, a2, tau)
    dtype = compute_dtype(g1, g2)
    b1, b2 = l2n(g1, dtype), l2n(g2, dtype)
    y1, y2 = _graph_labels(b1), _graph_labels(b2)
    graph = 0.5 * (_supcon_within(b1, y2, tau, detach_candidates)
                   + _supcon_within(b2, y1, tau, detach_candidates))
    return instance + weight * graph


MULTICROP_RULES = ("self", "component")


@full_precision
def multicrop_term(small: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, temperature: float = 0.1,
                   rule: str = "self", detach_candidates: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """WCL's KNN-selected multi-crop term (an UNVERIFIED reading of the paper: docs/methods/wcl.md, "Multi-crop").

    Args:
        small: ``(N, K, D)`` graph-head outputs of the K small crops of each of the N samples.
        g1, g2: ``(N, D)`` graph-head outputs of the two main views (the batch ``wcl_loss`` sees).
        temperature: ``tau`` of the SupCon term.
        rule: ``"self"`` accepts a small crop of sample i when its most cosine-similar main-view
            embedding (among the 2N rows of ``g1`` and ``g2``) is one of i's own two main views;
            ``"component"`` when that embedding is in i's weak-label component (for a view-v column
            ``j``: ``y^v_j == y^v_i``, ``y^v`` the components of view v's 1-NN graph, as in
            ``wcl_loss``). "component" accepts every crop "self" accepts.
        detach_candidates: detach the main-view columns (as ``wcl_loss`` does by default).

    Every small crop ``c`` of sample i is an anchor of a SupCon L_out over the 2N main-view
    embeddings, positives ``P = {(v, j): y^v_j == y^v_i}`` (i's component in each view, i's own
    two views included)::

        l(c) = -(1 / |P|) sum_{p in P} log( exp(c . m_p / tau) / sum_{q in 1..2N} exp(c . m_q / tau) )

    The term is the mean of ``l`` over the accepted crops (0, still connected to the graph, when
    none is accepted). Returns ``(term, accepted)``, ``accepted`` a ``(N, K)`` bool tensor.
    """
    if small.dim() != 3 or small.shape[0] != g1.shape[0] or g1.shape != g2.shape \
            or small.shape[2] != g1.shape[1]:
        raise ValueError(f"multicrop_term: small must be (N, K, D) and g1, g2 (N, D), got "
                         f"{tuple(small.shape)}, {tuple(g1.shape)}, {tuple(g2.shape)}")
    if rule not in MULTICROP_RULES:
        raise ValueError(f"multicrop_term: rule must be one of {MULTICROP_RULES}, got {rule!r}")
    n, k, _ = small.shape
    dtype = compute_dtype(small, g1, g2)
    c = l2n(small.reshape(n * k, -1), dtype)  # row i * K + s: crop s of sample i
    m = torch.cat([l2n(g1, dtype), l2n(g2, dtype)])  # row v * N + j: view v of sample j
    owner = torch.arange(n, device=c.device).repeat_interleave(k)
    with torch.no_grad():
        y1, y2 = (nn_graph_labels(one_nn_index(b)) for b in m.detach().chunk(2))
        # column v * N + j is a positive of the crops of sample i iff y^v_j == y^v_i
        pos = torch.cat([y1[None, :] == y1[owner, None], y2[None, :] == y2[owner, None]], dim=1)
        nearest = (c.detach() @ m.detach().T).argmax(dim=1)
        if rule == "self":
            accepted = nearest % n == owner
        else:
            accepted = pos.gather(1, nearest[:, None]).squeeze(1)
    cand = m.detach() if detach_candidates else m
    logits = (c @ cand.T) / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_crop = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1).to(dtype)  # |P| >= 2
    term = (per_crop * accepted.to(dtype)).sum() / accepted.sum().clamp(min=1).to(dtype)
    return term, accepted.view(n, k)
