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

:func:`diagnose` runs them on a finished checkpoint (``relssl eval diagnose RUN_DIR``); see
``docs/evaluation.md`` ("Diagnostics").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "false_negative_stats",
    "soft_target_stats",
    "ascl_candidate_labels",
    "neighbour_purity",
    "self_match_rate",
    "component_stats",
    "mixture_similarity_profile",
    "queue_stats",
    "SIZE_BINS",
    "diagnose",
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
    ent_i = -(torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))).sum(1)
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


# ----------------------------------------------------------------------------- a checkpoint


def _py(v):
    """Tensors -> JSON values (NaN -> None)."""
    if isinstance(v, Tensor):
        v = v.detach().cpu().tolist()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_py(x) for x in v]
    if isinstance(v, dict):
        return {k: _py(x) for k, x in v.items()}
    return v


def _pooled(parts: list[dict[str, Tensor]], weight_key: str) -> dict:
    """Weighted mean of per-batch results (weights = ``weight_key``), NaNs of empty batches skipped."""
    out = {}
    w = torch.stack([p[weight_key].float().cpu() for p in parts])
    for key in parts[0]:
        if key == weight_key:
            out[key] = int(w.sum())
            continue
        v = torch.stack([p[key].float().cpu() for p in parts])
        ok = ~torch.isnan(v) & (w > 0)
        out[key] = _py((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else None
    return out


def _method_temperature(cfg, default: float = 0.2) -> float:
    m = cfg.method
    for key in ("temperature", "tau_s", "t1"):
        val = m.get(key) if isinstance(m, dict) else getattr(m, key, None)
        if isinstance(val, (int, float)) and val > 0:
            return float(val)
    return default


def _embedder(method):
    """The network whose output is contrasted: ``method.online`` (backbone + projection head) when
    the method has one, else the backbone. Returns (module, name)."""
    online = getattr(method, "online", None)
    if isinstance(online, torch.nn.Module):
        return online, "online"
    return method.backbone, "backbone"


@torch.no_grad()
def diagnose(setup, batch: int = 256, n: int = 2000, temperature: float | None = None, topk: int = 5,
             seed: int = 0) -> dict:
    """False-negative diagnostics of a finished checkpoint (``relssl eval diagnose``).

    1. **in-batch**: ``n`` test images (class-balanced subset) embedded by ``method.online`` when
       the method has one (backbone + projection head: the space the loss contrasts), else by the
       backbone; cut into batches of ``batch``; each image is an anchor whose candidates are the
       other images of its batch (negatives) plus an idealised positive of cosine 1 (itself), at
       the method's temperature: :func:`false_negative_stats`, pooled over batches.
    2. **queues**: every :class:`~relssl.nn.FeatureQueue` in the method (``queue``, ``queue1`` /
       ``queue2``, MSF's ``bank``, NNCLR's support set): :func:`queue_stats` with ages relative
       to the checkpoint's global step, and, for ``batch`` training images (the pretraining split
       the engine used, so the stored indices match), the purity and self-match rate of their
       nearest ``topk`` written rows, and the false-negative stats of the queue as negatives.
    """
    from relssl.engine.checkpoint import load_checkpoint_file
    from relssl.evaluate.knn import extract_features
    from relssl.nn import FeatureQueue

    if batch < 2 or n < 2:
        raise ValueError(f"diagnose needs batch >= 2 and n >= 2, got batch={batch}, n={n}")
    cfg, method, dev = setup.cfg, setup.method, setup.device
    temp = float(temperature) if temperature is not None else _method_temperature(cfg)
    net, net_name = _embedder(method)

    def embed(images: Tensor) -> Tensor:
        return extract_features(net, images, size=setup.eval_size, mean=setup.mean, std=setup.std,
                                device=dev, normalize=True)

    test = setup.test_split()
    test = test.subset(n, seed=seed) if n < len(test) else test
    z = embed(test.images)
    y = test.labels.to(dev)
    parts = []
    for start in range(0, len(z), batch):
        zb, yb = z[start:start + batch], y[start:start + batch]
        if len(zb) < 2:
            continue
        eye = torch.eye(len(zb), dtype=torch.bool, device=dev)
        parts.append(false_negative_stats(zb, zb, yb, yb, temp, positive_mask=eye))
    in_batch = {"images": int(len(z)), "batch": batch, **_pooled(parts, "anchors")}

    ckpt = load_checkpoint_file(setup.ckpt_path)
    step = int(ckpt.get("global_step", 0) or 0)
    queues = {}
    named = [(name, mod) for name, mod in method.named_modules() if isinstance(mod, FeatureQueue)]
    if named:
        pre = setup.splits.pretrain.subset(cfg.data.subset, seed=cfg.seed)
        g = torch.Generator().manual_seed(seed)
        pos = torch.randperm(len(pre), generator=g)[:batch].sort().values
        sample = pre.take(pos).materialize()
        zt = embed(sample.images)
        yt = sample.labels.to(dev) if sample.labels is not None else torch.full((len(pos),), -1, device=dev)
        it = pos.to(dev)
    for name, q in named:
        qs = queue_stats(q, current_step=step, num_classes=setup.num_classes)
        entry = {"size": q.size, "dim": q.dim, **_py(qs)}
        if q.dim == zt.shape[1]:
            k = max(1, min(topk, q.size))
            _, idx = q.topk(zt, k, valid_only=True)
            written = q.valid_mask()[idx]
            nl = torch.where(written, q.labels[idx], torch.full_like(idx, -1))
            ni = torch.where(written, q.index[idx], torch.full_like(idx, -1))
            m = len(zt)
            cand = torch.cat([zt, q.features.float()])
            valid = torch.cat([torch.eye(m, dtype=torch.bool, device=dev),
                               q.valid_mask().view(1, -1).expand(m, -1)], dim=1)
            positive = torch.zeros_like(valid)
            positive[:, :m] = valid[:, :m]  # the anchor itself: an idealised positive of cosine 1
            fn = false_negative_stats(zt, cand, yt, torch.cat([yt, q.labels]), temp, positive_mask=positive,
                                      candidate_valid=valid)
            entry.update({
                "probe_images": m, "topk": k,
                "nn1_purity": _py(neighbour_purity(yt, nl[:, 0])), f"nn{k}_purity": _py(neighbour_purity(yt, nl)),
                "nn1_self_match": _py(self_match_rate(it, ni[:, 0])),
                f"nn{k}_self_match": _py(self_match_rate(it, ni)),
                "queue_negatives": _py(fn),
            })
        else:
            entry["note"] = (f"queue rows are {q.dim}-d but {net_name} gives {zt.shape[1]}-d embeddings: "
                             "no neighbour statistics")
        queues[name] = entry
    return {**setup.header("diagnose"), "labels_used": "monitoring only (never for training)",
            "embedding": net_name, "temperature": temp, "global_step": step, "in_batch": in_batch,
            "queues": queues}
