"""False-negative diagnostics of a finished checkpoint (``relssl eval diagnose RUN_DIR``; see
``docs/evaluation.md``, "Diagnostics"). The statistics are the pure functions of
:mod:`relssl.metrics.falseneg`, which training steps use too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from relssl.errors import ConfigError
from relssl.metrics.falseneg import (
    false_negative_stats,
    neighbour_purity,
    queue_stats,
    self_match_rate,
)


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
    from relssl.metrics.knn import extract_features
    from relssl.nn import FeatureQueue

    if batch < 2 or n < 2:
        raise ValueError(f"diagnose needs batch >= 2 and n >= 2, got batch={batch}, n={n}")
    if getattr(setup, "exported", False):
        raise ConfigError(f"{setup.ckpt_path} holds the backbone alone; diagnose needs the method's heads and "
                          "queues: pass the run directory or its checkpoint")
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
