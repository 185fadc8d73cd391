"""False-negative diagnostics (issue #13): how many negatives are really of the anchor's class,
how much softmax mass they take, how pure soft targets / neighbours / graph components are, and
how fresh and self-matching the queues are.

Labels are used **only for monitoring**, never for training. Every function here is

* pure and vectorised: tensors in, a dict of 0-d (or small 1-d) tensors out, on the inputs'
  device -- no ``.item()``, no host synchronisation, so a training step can call it every N
  steps and log the tensors (``queue_stats`` with ``num_classes=None`` is the one exception:
  ``torch.bincount`` needs the largest label);
* no-grad (``torch.no_grad`` decorator) and computed in float32;
* NaN where a quantity is undefined (no labelled pair, empty bin, empty queue), with the count
  of what was used beside it, so means can be re-weighted when batches are pooled.

Label convention: ``-1`` (any negative value) = unknown / empty; such entries are ignored.
Features are L2-normalised here, so every similarity is a cosine.

Training steps call them through ``relssl.methods.diagnose``; :func:`relssl.evaluate.diagnostics.diagnose`
runs them on a finished checkpoint (``relssl eval diagnose RUN_DIR``); see ``docs/evaluation.md``
("Diagnostics").
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from relssl.losses.graph import nn_graph_labels, one_nn_index

__all__ = [
    "false_negative_stats",
    "soft_target_stats",
    "target_stats",
    "row_entropy",
    "ascl_candidate_labels",
    "neighbour_purity",
    "neighbour_metrics",
    "topk_neighbour_purity",
    "self_match_rate",
    "component_stats",
    "graph_stats",
    "mixture_similarity_profile",
    "queue_stats",
    "SIZE_BINS",
]

SIZE_BINS = ("1", "2", "3", "4", "5+")  # component-size histogram bins of component_stats


def _nan(device) -> Tensor:
    return torch.tensor(float("nan"), device=device)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, NaN where den == 0 (no host sync)."""
    den = den.float()
    return torch.where(den > 0, num.float() / den.clamp_min(1e-12), torch.full_like(den, float("nan")))


def _as_row_mask(mask: Tensor | None, n: int, m: int, device) -> Tensor:
    if mask is None:
        return torch.ones(n, m, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    if mask.dim() == 1:
        mask = mask.view(1, -1).expand(n, m)
    if mask.shape != (n, m):
        raise ValueError(f"mask must have shape ({m},) or ({n}, {m}), got {tuple(mask.shape)}")
    return mask


@torch.no_grad()
def false_negative_stats(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor,
                         temperature: float, positive_mask: Tensor | None = None,
                         candidate_valid: Tensor | None = None) -> dict[str, Tensor]:
    r"""False negatives among the negatives of each anchor, and the softmax mass they carry.

    Shapes: ``anchors`` (N, D), ``candidates`` (M, D) (batch keys and/or queue rows),
    ``anchor_labels`` (N,), ``candidate_labels`` (M,) (or (N, M) when every anchor has its own
    candidates' labels); ``positive_mask`` (N, M) bool marks each anchor's positive(s) (never
    negatives; default: no positive among the candidates); ``candidate_valid`` (M,) or (N, M)
    bool: entries that take part at all (e.g. ``~eye`` to drop the anchor itself from an
    in-batch setting, or a queue's ``valid_mask()``).

    With :math:`s_{ij} = \cos(a_i, c_j) / T` and :math:`V_i` the valid candidates of anchor i,
    negatives :math:`\mathcal N_i = V_i \setminus P_i`, labelled negatives
    :math:`\mathcal L_i = \{j \in \mathcal N_i : y_j \ge 0\}` (and :math:`y_i \ge 0`), false
    negatives :math:`\mathcal F_i = \{j \in \mathcal L_i : y_j = y_i\}`:

    * ``fn_rate`` = mean over used anchors of :math:`|\mathcal F_i| / |\mathcal L_i|`;
    * ``fn_mass`` = mean over used anchors of :math:`\sum_{j \in \mathcal F_i} p_{ij}`, with
      :math:`p_{ij} = \mathrm{softmax}_{j \in V_i}(s_{ij})` -- the softmax over negatives +
      positive(s), as in InfoNCE;
    * ``neg_mass``: the same for all negatives (``1 - positive mass``);
    * ``fn_sim`` / ``tn_sim``: mean cosine of false / true (labelled, other-class) negatives,
      pooled over pairs (the "similarity distributions of true vs false negatives");
    * ``anchors``: number of anchors used (labelled, with >= 1 labelled negative), long.

    Anchors without a label or without a labelled negative are left out of the means; a mean
    over no anchor is NaN.
    """
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(f"anchors (N, D) and candidates (M, D) expected, got {tuple(anchors.shape)} "
                         f"and {tuple(candidates.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dev = anchors.device
    n, m = anchors.shape[0], candidates.shape[0]
    a = F.normalize(anchors.float(), dim=1)
    c = F.normalize(candidates.to(dev).float(), dim=1)
    cos = a @ c.T  # (N, M)
    valid = _as_row_mask(candidate_valid, n, m, dev)
    pos = _as_row_mask(positive_mask, n, m, dev) & valid if positive_mask is not None else torch.zeros_like(valid)
    ya = anchor_labels.to(dev).long().view(n, 1)
    yc = candidate_labels.to(dev).long()
    yc = yc.view(1, m) if yc.dim() == 1 else yc
    neg = valid & ~pos
    lab_neg = neg & (yc >= 0) & (ya >= 0)
    fn = lab_neg & (yc == ya)
    tn = lab_neg & (yc != ya)
    n_lab = lab_neg.sum(1)
    used = n_lab > 0
    n_used = used.sum()
    logits = (cos / temperature).masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    p = torch.where(valid, (logits - lse).exp(), torch.zeros_like(logits))
    rate_i = fn.sum(1).float() / n_lab.clamp_min(1).float()
    fn_mass_i = (p * fn).sum(1)
    neg_mass_i = (p * neg).sum(1)
    usedf = used.float()
    return {
        "fn_rate": _safe_div((rate_i * usedf).sum(), n_used),
        "fn_mass": _safe_div((fn_mass_i * usedf).sum(), n_used),
        "neg_mass": _safe_div((neg_mass_i * usedf).sum(), n_used),
        "fn_sim": _safe_div((cos * fn).sum(), fn.sum()),
        "tn_sim": _safe_div((cos * tn).sum(), tn.sum()),
        "anchors": n_used,
    }


@torch.no_grad()
def ascl_candidate_labels(anchor_labels: Tensor, queue_labels: Tensor) -> Tensor:
    """Labels of ASCL's candidates [positive key, queue]: (N, 1 + K), column 0 = the anchor's own label."""
    n = anchor_labels.shape[0]
    ql = queue_labels.to(anchor_labels.device).long().view(1, -1).expand(n, -1)
    return torch.cat([anchor_labels.long().view(n, 1), ql], dim=1)


def row_entropy(p: Tensor) -> Tensor:
    """Entropy in nats of each row of ``p`` (N, K) (rows sum to 1; 0 log 0 = 0)."""
    p = p.float()
    return -(torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))).sum(1)


@torch.no_grad()
def target_stats(p: Tensor) -> dict[str, Tensor]:
    """Label-free profile of soft labels ``p`` (N, K): ``target_entropy``, the mean entropy in nats,
    and ``target_max``, the mean largest probability (MSVQ's and ReSSL's logged metrics)."""
    return {"target_entropy": row_entropy(p).mean(), "target_max": p.float().max(dim=1).values.mean()}


@torch.no_grad()
def soft_target_stats(target_probs: Tensor, anchor_labels: Tensor, candidate_labels: Tensor) -> dict[str, Tensor]:
    r"""How much of a soft target sits on same-class entries, and how peaked it is.

    ``target_probs`` (N, K): rows sum to 1 (MSVQ / ReSSL teacher distributions over the queue;
    ASCL targets over [positive, queue], labels from :func:`ascl_candidate_labels`, normalise
    ASCL's weights to sum 1 first). ``anchor_labels`` (N,); ``candidate_labels`` (K,) or (N, K).

    * ``same_mass`` = mean over labelled rows of :math:`\sum_{j: y_j = y_i} p_{ij}` (entries with
      unknown label count as not same-class);
    * ``same_share`` = mean share of labelled candidates of the anchor's class: the ``same_mass``
      a uniform (or label-blind) target would have -- the chance level to compare with;
    * ``entropy`` = mean over all rows of :math:`-\sum_j p_{ij} \log p_{ij}` (nats; 0 = one-hot,
      :math:`\log K` = uniform);
    * ``rows``: number of labelled rows used for ``same_mass``.
    """
    p = target_probs.float()
    if p.dim() != 2:
        raise ValueError(f"target_probs must be (N, K), got {tuple(p.shape)}")
    n, k = p.shape
    dev = p.device
    ya = anchor_labels.to(dev).long().view(n, 1)
    yc = candidate_labels.to(dev).long()
    yc = yc.view(1, k).expand(n, k) if yc.dim() == 1 else yc
    row_ok = ya.view(-1) >= 0
    known = (yc >= 0) & (ya >= 0)
    same = known & (yc == ya)
    mass_i = (p * same).sum(1)
    share_i = same.sum(1).float() / known.sum(1).clamp_min(1).float()
    ent_i = row_entropy(p)
    n_rows = row_ok.sum()
    okf = row_ok.float()
    return {
        "same_mass": _safe_div((mass_i * okf).sum(), n_rows),
        "same_share": _safe_div((share_i * okf).sum(), n_rows),
        "entropy": ent_i.mean() if n > 0 else _nan(dev),
        "rows": n_rows,
    }


@torch.no_grad()
def neighbour_purity(anchor_labels: Tensor, neighbour_labels: Tensor) -> Tensor:
    """Share of (anchor, neighbour) pairs with the same class, over pairs where both labels are known.

    ``anchor_labels`` (N,), ``neighbour_labels`` (N,) (top-1: NNCLR, pNNCLR) or (N, k) (MSF top-k),
    the labels stored beside the chosen queue rows. 0-d float tensor; NaN when no pair is labelled.
    """
    ya = anchor_labels.long().view(-1, 1)
    yn = neighbour_labels.to(ya.device).long().view(ya.shape[0], -1)
    known = (ya >= 0) & (yn >= 0)
    return _safe_div((known & (yn == ya)).sum(), known.sum())


@torch.no_grad()
def self_match_rate(anchor_index: Tensor, neighbour_index: Tensor) -> Tensor:
    """Share of chosen neighbours that are a stale copy of the anchor itself (same stored sample index).

    ``anchor_index`` (N,) dataset indices of the anchors; ``neighbour_index`` (N,) or (N, k) the
    sample indices stored beside the chosen queue rows (``queue.index[idx]``). Pairs where either
    index is unknown (< 0) are left out; NaN when none is left.
    """
    ia = anchor_index.long().view(-1, 1)
    inb = neighbour_index.to(ia.device).long().view(ia.shape[0], -1)
    known = (ia >= 0) & (inb >= 0)
    return _safe_div((known & (inb == ia)).sum(), known.sum())


@torch.no_grad()
def neighbour_metrics(nn_labels: Tensor, nn_index: Tensor, labels: Tensor | None,
                      index: Tensor | None) -> dict[str, Tensor]:
    """Support-set quality of the neighbours found for B queries in V views (NNCLR, pNNCLR).

    ``nn_labels`` / ``nn_index`` (V, B): the label and sample index stored beside each chosen
    queue row (-1 = empty row or unknown; read *before* the step's queue writes). ``nn_purity`` =
    :func:`neighbour_purity` of the queries' ``labels`` (B,) against them, pooled over the views;
    ``nn_self`` = :func:`self_match_rate` against the queries' dataset ``index`` (B,). A key is
    left out when its input is None. Device-side only (no host synchronisation).
    """
    out: dict[str, Tensor] = {}
    if labels is not None:
        out["nn_purity"] = neighbour_purity(labels.repeat(nn_labels.shape[0]), nn_labels.reshape(-1))
    if index is not None:
        out["nn_self"] = self_match_rate(index.repeat(nn_index.shape[0]), nn_index.reshape(-1))
    return out


@torch.no_grad()
def topk_neighbour_purity(queue, queries: Tensor, labels: Tensor, topk: int) -> Tensor:
    """:func:`neighbour_purity` of the ``topk`` nearest rows of ``queue`` (a
    :class:`relssl.nn.FeatureQueue`) to each of ``queries``, against the queries' ``labels`` (MSF)."""
    _, idx = queue.topk(queries, topk)
    return neighbour_purity(labels, queue.labels[idx])


@torch.no_grad()
def component_stats(component_ids: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Purity and size distribution of graph components (WCL's batch graph).

    ``component_ids`` (N,) any integer id per node (e.g. ``relssl.losses.connected_components``),
    ``labels`` (N,). Computed pairwise (O(N^2) booleans: a batch), with no host sync:

    * ``purity``: among unordered pairs {i, j} in the same component with both labels known, the
      share with the same class (NaN if there is no such pair: all singletons);
    * ``mean_size``: mean component size = N / number of components;
    * ``size_hist`` (5,): fraction of components of size 1, 2, 3, 4, 5+ (:data:`SIZE_BINS`);
    * ``components``: number of components (float: it is a sum of 1/size).
    """
    ids = component_ids.long().view(-1)
    n = ids.shape[0]
    dev = ids.device
    y = labels.to(dev).long().view(-1)
    same_comp = ids.view(-1, 1) == ids.view(1, -1)
    upper = torch.ones(n, n, dtype=torch.bool, device=dev).triu(1)
    known = (y >= 0).view(-1, 1) & (y >= 0).view(1, -1)
    pairs = same_comp & upper & known
    same_cls = pairs & (y.view(-1, 1) == y.view(1, -1))
    size = same_comp.sum(1).float()  # size of each node's component
    inv = 1.0 / size.clamp_min(1)
    n_comp = inv.sum()
    bins = (size.long().clamp(1, 5) - 1)
    hist = torch.zeros(5, device=dev).scatter_add_(0, bins, inv)
    return {
        "purity": _safe_div(same_cls.sum(), pairs.sum()),
        "mean_size": _safe_div(torch.tensor(float(n), device=dev), n_comp),
        "size_hist": hist / n_comp.clamp_min(1e-12),
        "components": n_comp,
    }


@torch.no_grad()
def graph_stats(embeddings: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
    """``graph_size`` and (with ``labels``) ``graph_purity`` of the 1-NN graphs of ``embeddings`` (WCL).

    Each ``(N, D)`` tensor (one per view) is l2-normalised, every row linked to its most
    cosine-similar other row, and the connected components taken as weak labels (as in
    ``relssl.losses.wcl_loss``). Returns the means over the views of the mean component size
    (N / #components) and of the :func:`component_stats` purity (the share of same-class pairs
    among the pairs in one component). Computed every step, so it uses the fixed-round
    ``nn_graph_labels`` and never synchronises a GPU.
    """
    sizes, purities = [], []
    for g in embeddings:
        b = F.normalize(g.detach().float(), dim=1)
        comp = nn_graph_labels(one_nn_index(b))
        y = labels if labels is not None else torch.full_like(comp, -1)
        s = component_stats(comp, y)
        sizes.append(s["mean_size"])
        purities.append(s["purity"])
    out = {"graph_size": torch.stack(sizes).mean()}
    if labels is not None:
        out["graph_purity"] = torch.stack(purities).mean()
    return out


@torch.no_grad()
def mixture_similarity_profile(q_mix: Tensor, keys: Tensor, perm: Tensor, lam: Tensor | float,
                               bins: int = 5) -> dict[str, Tensor]:
    r"""BSIM: how a mixture's similarity to its two sources follows lambda.

    ``q_mix`` (B, D) embeddings of the mixtures :math:`\lambda_i x_i + (1-\lambda_i) x_{\pi(i)}`,
    ``keys`` (B, D) clean embeddings, ``perm`` (B,) the partner :math:`\pi`, ``lam`` (B,) or a
    scalar. With :math:`s^{src}_i = \cos(q_i, k_i)`, :math:`s^{par}_i = \cos(q_i, k_{\pi(i)})`,
    lambda in [0, 1] is cut into ``bins`` equal bins; per bin (``bins``-vectors, NaN if empty):
    ``lam_mean``, ``sim_source``, ``sim_partner``, ``count``; plus ``bin_edges`` (bins + 1) and
    ``corr``: the Pearson correlation over samples of :math:`\lambda_i` with
    :math:`s^{src}_i - s^{par}_i` (expected > 0: the mixture looks more like the source as lambda
    grows; NaN if lambda is constant).
    """
    q = F.normalize(q_mix.float(), dim=1)
    k = F.normalize(keys.to(q.device).float(), dim=1)
    b = q.shape[0]
    dev = q.device
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=dev)
    lam_t = lam_t.expand(b) if lam_t.dim() == 0 else lam_t.view(b)
    perm = perm.to(dev).long().view(b)
    s_src = (q * k).sum(1)
    s_par = (q * k[perm]).sum(1)
    idx = (lam_t.clamp(0, 1) * bins).long().clamp(0, bins - 1)
    count = torch.zeros(bins, device=dev).scatter_add_(0, idx, torch.ones(b, device=dev))

    def per_bin(v: Tensor) -> Tensor:
        return _safe_div(torch.zeros(bins, device=dev).scatter_add_(0, idx, v), count)

    d = s_src - s_par
    lc, dc = lam_t - lam_t.mean(), d - d.mean()
    corr = _safe_div((lc * dc).sum(), (lc.square().sum() * dc.square().sum()).sqrt())
    return {"bin_edges": torch.linspace(0, 1, bins + 1, device=dev), "lam_mean": per_bin(lam_t),
            "sim_source": per_bin(s_src), "sim_partner": per_bin(s_par), "count": count, "corr": corr}


@torch.no_grad()
def queue_stats(queue, current_step: int | Tensor | None = None, num_classes: int | None = None) -> dict[str, Tensor]:
    """Fill, staleness, duplicates and labels of a :class:`relssl.nn.FeatureQueue`.

    * ``fill``: written rows / size;
    * ``age_mean`` / ``age_max``: ``current_step - step`` over written rows, in the unit of the
      steps given to ``enqueue`` (the training step; ``current_step=None``: the queue's own
      ``enqueue`` counter); NaN when empty;
    * ``duplicate_rate``: share of rows with a known sample index that are a second (or later)
      copy of an index already in the queue (a queue larger than the dataset holds duplicates);
    * ``labelled``: share of written rows with a known label; ``class_hist`` (C,): fraction of
      labelled rows per class; ``label_entropy``: its entropy in nats (log C = balanced).
      ``num_classes=None`` takes C = largest stored label + 1 (one host sync).
    """
    dev = queue.features.device
    valid = queue.valid_mask() & (queue.step >= 0)
    n_valid = valid.sum()
    age = queue.age(current_step).float()
    agev = torch.where(valid, age, torch.zeros_like(age))
    age_max = torch.where(n_valid > 0, torch.where(valid, age, torch.full_like(age, float("-inf"))).max(),
                          _nan(dev))
    idx = queue.index
    has_idx = valid & (idx >= 0)
    key = torch.where(has_idx, idx, torch.full_like(idx, -1))
    srt = key.sort().values
    dup = ((srt[1:] == srt[:-1]) & (srt[1:] >= 0)).sum()
    lab = queue.labels
    has_lab = valid & (lab >= 0)
    c = int(lab.max().clamp_min(0).item()) + 1 if num_classes is None else int(num_classes)
    hist = torch.zeros(c, device=dev).scatter_add_(0, torch.where(has_lab, lab, 0).clamp(0, c - 1), has_lab.float())
    frac = hist / hist.sum().clamp_min(1)
    ent = -(torch.where(frac > 0, frac * frac.clamp_min(1e-30).log(), torch.zeros_like(frac))).sum()
    return {
        "fill": n_valid.float() / queue.size,
        "age_mean": _safe_div(agev.sum(), n_valid),
        "age_max": age_max,
        "duplicate_rate": _safe_div(dup, has_idx.sum()),
        "labelled": _safe_div(has_lab.sum(), n_valid),
        "class_hist": frac,
        "label_entropy": torch.where(has_lab.any(), ent, _nan(dev)),
    }
