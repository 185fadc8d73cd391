"""Training-time false-negative diagnostics (issue #13): what a method hands the engine under
``out["_diag"]`` on the steps the engine asks for (``info.diagnose``, every
``trainer.diagnose_every`` steps when the dataset has labels).

Each helper turns tensors the step already computed into a flat dict of 0-d tensors (no host
sync here; the engine converts and logs them as ``diag/<key>``), using the pure functions of
:mod:`relssl.metrics.falseneg`. Labels are read for monitoring only. The statistics are
per process (each rank's own batch against the shared queue), except WCL's graph statistics and
BSIM's mixture profile, which use the gathered global batch. To keep the cost small, the
anchor-wise rates use the first :data:`MAX_ANCHORS` anchors of the batch (the batch is a
random draw, so they are a random sample) against all of the step's candidates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from relssl.metrics.falseneg import (
    SIZE_BINS,
    component_stats,
    false_negative_stats,
    mixture_similarity_profile,
    queue_stats,
    soft_target_stats,
)
from relssl.nn import FeatureQueue


MAX_ANCHORS = 128


def _fn(prefix: str, stats: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}_{k}": v for k, v in stats.items() if k in ("fn_rate", "fn_mass", "fn_sim", "tn_sim")}


@torch.no_grad()
def batch_diagnostics(anchors: Tensor, keys: Tensor, info, temperature: float, same_view: bool = True,
                      prefix: str = "batch") -> dict[str, Tensor]:
    """In-batch negatives: anchor i's positive is ``keys[i]``; its negatives are the other keys and,
    with ``same_view`` (NT-Xent), the other anchors. ``<prefix>_fn_rate`` = share of labelled
    negatives of the anchor's class, ``_fn_mass`` = softmax mass on them, ``_fn_sim`` /
    ``_tn_sim`` = mean cosine of false / true negatives."""
    if info.labels is None:
        return {}
    b = anchors.shape[0]
    n = min(b, MAX_ANCHORS)
    y = info.labels
    eye = torch.eye(n, b, dtype=torch.bool, device=anchors.device)  # anchor i's positive: column i
    if same_view:
        cand = torch.cat([keys, anchors])
        labels = torch.cat([y, y])
        positive = torch.cat([eye, torch.zeros_like(eye)], dim=1)
        valid = torch.cat([torch.ones_like(eye), ~eye], dim=1)
    else:
        cand, labels, positive, valid = keys, y, eye, None
    return _fn(prefix, false_negative_stats(anchors[:n].detach(), cand.detach(), y[:n], labels, temperature,
                                            positive_mask=positive, candidate_valid=valid))


@torch.no_grad()
def queue_diagnostics(q: Tensor, k: Tensor, queue: Tensor, queue_labels: Tensor, info, temperature: float,
                      prefix: str = "queue") -> dict[str, Tensor]:
    """MoCo-style negatives: the positive is ``k[i]``, the negatives the queue rows (as they were
    before this step's write; rows never written have label -1 and are left out of the rates)."""
    if info.labels is None:
        return {}
    n = min(q.shape[0], MAX_ANCHORS)
    y = info.labels[:n].to(queue_labels.device)
    cand = torch.cat([k[:n].detach().view(n, -1), queue])
    labels = torch.cat([y, queue_labels])
    positive = torch.zeros(n, cand.shape[0], dtype=torch.bool, device=q.device)
    positive[:, :n] = torch.eye(n, dtype=torch.bool, device=q.device)
    valid = positive.clone()
    valid[:, n:] = True  # the other keys of the batch are not MoCo candidates
    return _fn(prefix, false_negative_stats(q[:n].detach(), cand, y, labels, temperature,
                                            positive_mask=positive, candidate_valid=valid))


@torch.no_grad()
def target_diagnostics(probs: Tensor, info, candidate_labels: Tensor, prefix: str = "target") -> dict[str, Tensor]:
    """Soft targets (MSVQ, ReSSL, ASCL): ``_same_mass`` on the anchor's class, ``_same_share`` (the
    chance level: the share of labelled candidates of that class) and ``_entropy`` (nats)."""
    if info.labels is None:
        return {}
    s = soft_target_stats(probs, info.labels, candidate_labels)
    return {f"{prefix}_same_mass": s["same_mass"], f"{prefix}_same_share": s["same_share"],
            f"{prefix}_entropy": s["entropy"]}


@torch.no_grad()
def graph_diagnostics(component_ids: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
    """WCL's weak labels: component purity, mean size and the share of components of each size."""
    if labels is None:
        return {}
    s = component_stats(component_ids, labels)
    out = {"graph_comp_purity": s["purity"], "graph_comp_mean_size": s["mean_size"]}
    for name, share in zip(SIZE_BINS, s["size_hist"].unbind(0)):
        out[f"graph_comp_size_{name.replace('+', 'plus')}"] = share
    return out


@torch.no_grad()
def mixture_diagnostics(q_mix: Tensor, keys: Tensor, perm: Tensor, lam: Tensor, bins: int = 5) -> dict[str, Tensor]:
    """BSIM: the correlation of lambda with sim(mixture, source) - sim(mixture, partner), and both
    similarities per lambda bin (``bsim_sim_source_b0`` = lambda in [0, 1/bins), ...)."""
    p = mixture_similarity_profile(q_mix.detach(), keys.detach(), perm, lam, bins=bins)
    out = {"bsim_lam_corr": p["corr"]}
    for b in range(bins):
        out[f"bsim_sim_source_b{b}"] = p["sim_source"][b]
        out[f"bsim_sim_partner_b{b}"] = p["sim_partner"][b]
    return out


@torch.no_grad()
def queue_health(name: str, queue, info) -> dict[str, Tensor]:
    """Any :class:`relssl.nn.FeatureQueue` after this step's write: ``fill``, ``age_mean`` /
    ``age_max`` of the written rows in steps, ``duplicate_rate``, and ``stale_self`` = the share
    of this batch's images with an older copy of themselves in the queue (a negative that is
    the anchor itself, or a neighbour that is its own past)."""
    s = queue_stats(queue, current_step=info.step, num_classes=1)
    out = {f"{name}_fill": s["fill"], f"{name}_age_mean": s["age_mean"], f"{name}_age_max": s["age_max"],
           f"{name}_duplicate_rate": s["duplicate_rate"]}
    if info.index is not None:
        idx = info.index.to(queue.index.device).long().view(-1, 1)
        older = (queue.step >= 0) & (queue.step < info.step) & queue.valid_mask()
        stale = ((queue.index.view(1, -1) == idx) & older.view(1, -1)).any(dim=1)
        out[f"{name}_stale_self"] = stale.float().mean()
    return out


@torch.no_grad()
def step_diagnostics(method, out: dict, info) -> dict[str, Tensor]:
    """Everything a diagnostic step reports: the method's own (``out["_diag"]``, plug-ins' included)
    and :func:`queue_health` of every :class:`relssl.nn.FeatureQueue` in it (named by its attribute
    path, dots as underscores). The engine logs them as ``diag/<key>``."""
    values = dict(out.get("_diag") or {})
    for name, module in method.named_modules():
        if isinstance(module, FeatureQueue):
            values.update(queue_health(name.replace(".", "_"), module, info))
    return values
