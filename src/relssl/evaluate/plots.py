"""Plots: confusion matrices, 2-D embeddings (t-SNE, optional UMAP), training curves (loss, lr, the monitor's
kNN top-1 and RankMe).

Everything draws on a bare :class:`matplotlib.figure.Figure` rendered by the Agg canvas: no
pyplot, no global backend switch, so it works on headless machines and never changes the
caller's matplotlib state. matplotlib and scikit-learn come with ``pip install relssl[plots]``;
UMAP needs ``pip install umap-learn`` and is used only when asked for.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from relssl.errors import ConfigError, DataError


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - dev/plots extras install it
        raise ConfigError("plots need matplotlib: pip install 'relssl[plots]'") from err
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _finish(fig, path: str | Path, title: str) -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    idx = labels.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> list[float | None]:
    """Recall of each class in percent (None for a class absent from the test set)."""
    m = torch.as_tensor(matrix).double()
    total = m.sum(dim=1)
    return [None if n == 0 else round(100.0 * float(m[i, i] / n), 4) for i, n in enumerate(total)]


def plot_confusion(matrix, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (percent of each true class) as a PNG."""
    m = np.asarray(torch.as_tensor(matrix).cpu(), dtype=np.float64)
    c = m.shape[0]
    norm = 100.0 * m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    side = min(14.0, 2.5 + 0.45 * c)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    if c <= 30:
        names = [str(n) for n in class_names]
        ax.set_xticks(range(c), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(c), names, fontsize=8)
        for i in range(c):
            for j in range(c):
                if norm[i, j] >= 0.5:
                    ax.text(j, i, f"{norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 60 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _default_threads() -> int:
    # half the cores, at most 8: OpenMP threads that spin on a busy (or 2-core) machine make
    # t-SNE ten times slower, and a few thousand points gain little from more threads
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def embed_2d(features: torch.Tensor | np.ndarray, method: str = "tsne", seed: int = 0,
             perplexity: float = 30.0, threads: int | None = None) -> np.ndarray:
    """(N, 2) embedding of (N, D) features by t-SNE (scikit-learn, PCA init) or UMAP (umap-learn).

    ``threads`` caps the OpenMP / BLAS threads used (default: half the cores, at most 8)."""
    try:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn
    except ImportError:
        return _embed_2d(features, method, seed, perplexity)
    with threadpool_limits(limits=threads or _default_threads()):
        return _embed_2d(features, method, seed, perplexity)


def _embed_2d(features, method: str, seed: int, perplexity: float) -> np.ndarray:
    x = np.asarray(torch.as_tensor(features).float().cpu())
    n = len(x)
    if n < 5:
        raise DataError(f"an embedding plot needs at least 5 points, got {n}")
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as err:  # pragma: no cover
            raise ConfigError("t-SNE needs scikit-learn: pip install 'relssl[plots]'") from err
        perp = float(min(perplexity, max(2.0, (n - 1) / 3.0)))
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ConfigError("UMAP needs the optional package umap-learn: pip install umap-learn "
                              "(or use --method tsne)") from err
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise ConfigError(f"unknown embedding method {method!r}; allowed: tsne, umap")


def plot_embedding(points: np.ndarray, labels, class_names: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    """Scatter plot of 2-D points coloured by class, with a legend of class names."""
    pts = np.asarray(points)
    y = np.asarray(torch.as_tensor(labels).cpu())
    fig = _figure(8.0, 6.5)
    ax = fig.add_subplot(1, 1, 1)
    classes = sorted(set(int(v) for v in y))
    cmap_name = "tab10" if len(class_names) <= 10 else "tab20" if len(class_names) <= 20 else "turbo"
    import matplotlib

    cmap = matplotlib.colormaps[cmap_name]
    ncol = max(len(class_names), 1)
    for c in classes:
        m = y == c
        color = cmap(c % 20) if cmap_name != "turbo" else cmap(c / max(ncol - 1, 1))
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(pts[m, 0], pts[m, 1], s=10 if len(pts) <= 1000 else 4, color=color, label=name, alpha=0.8, linewidths=0)
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def embedding_plot(setup, path: str | Path | None = None, method: str = "tsne", n: int = 2000, seed: int = 0,
                   perplexity: float = 30.0) -> dict:
    """Embed the test split's L2-normalised backbone features in 2-D and plot them by class.

    ``n`` test images (class-balanced, seeded; 0 = all) keep t-SNE quick on a CPU (2000 points:
    about 10 s). Returns a result dict (``png`` = the written file, if ``path``); ``points``
    (the 2-D coordinates) are kept out of the JSON the CLI writes.
    """
    from relssl.evaluate.checkpoint import timed

    if n < 0:
        raise ConfigError(f"--n must be >= 0 (0 = the whole test split), got {n}")
    res = {**setup.header(method), "n": 0, "seed": seed}
    with timed(res):
        test = setup.test_split().subset(n or None, seed=seed)
        feats = setup.features(test.images)
        pts = embed_2d(feats, method, seed=seed, perplexity=perplexity)
        res["n"] = len(test)
        if method == "tsne":
            res["perplexity"] = float(min(perplexity, max(2.0, (len(test) - 1) / 3.0)))
        if path is not None:
            title = (f"{setup.cfg.method['name']}{' (random init)' if setup.random_init else ''} - "
                     f"{setup.cfg.data.dataset} test, {'t-SNE' if method == 'tsne' else 'UMAP'} of {len(test)} backbone features")
            res["png"] = str(plot_embedding(pts, test.labels, setup.class_names, path, title))
    res["points"] = pts.tolist()
    return res


# ----------------------------------------------------------------------------- training curves


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``metrics.csv`` with empty cells dropped and numbers parsed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no metrics file {path}; pass a run directory made by relssl pretrain")
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                if k is None or v in (None, ""):
                    continue
                try:
                    parsed[k] = float(v)
                except ValueError:
                    continue
            rows.append(parsed)
    return rows


def _series(rows, key: str, x: str):
    pts = [(r[x], r[key]) for r in rows if key in r and x in r and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(metrics_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """Loss (per step and per-epoch mean), learning rate, kNN top-1 and RankMe per epoch from ``metrics.csv``
    (the monitor's panels when their columns are present), each with its random-init value dashed."""
    rows = read_metrics_csv(metrics_csv)
    if not rows:
        raise DataError(f"{metrics_csv} holds no rows: the run logged nothing yet")
    panels = []
    if any("loss" in r for r in rows):
        panels.append("loss")
    if any("lr" in r for r in rows):
        panels.append("lr")
    if any("knn_top1" in r for r in rows):
        panels.append("knn")
    if any("rankme" in r for r in rows):
        panels.append("rankme")
    if not panels:
        raise DataError(f"{metrics_csv} has no loss, lr, knn_top1 or rankme column")
    fig = _figure(4.6 * len(panels), 3.6)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if name == "loss":
            xs, ys = _series(rows, "loss", "step")
            ax.plot(xs, ys, lw=0.6, alpha=0.4, color="tab:blue", label="per step")
            by_epoch: dict[float, list] = {}
            for r in rows:
                if "loss" in r and "epoch" in r:
                    by_epoch.setdefault(r["epoch"], []).append((r.get("step", 0.0), r["loss"]))
            if by_epoch:
                ex = [max(s for s, _ in v) for v in by_epoch.values()]
                ey = [sum(v2 for _, v2 in v) / len(v) for v in by_epoch.values()]
                ax.plot(ex, ey, "o-", color="tab:blue", ms=3, label="epoch mean")
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.legend(fontsize=8)
        elif name == "lr":
            xs, ys = _series(rows, "lr", "step")
            ax.plot(xs, ys, color="tab:orange")
            ax.set_xlabel("step")
            ax.set_ylabel("learning rate")
        else:  # a monitor's number per epoch (logged at the epoch's end), its random-init value dashed
            key, label, color = {"knn": ("knn_top1", "kNN top-1 (%)", "tab:green"),
                                 "rankme": ("rankme", "RankMe (effective rank)", "tab:purple")}[name]
            init_key = "knn_init_top1" if name == "knn" else "rankme_init"
            xs, ys = _series(rows, key, "epoch")
            ax.plot([x + 1 for x in xs], ys, "o-", color=color, ms=3, label=label.split(" (")[0])
            init = [r[init_key] for r in rows if init_key in r]
            if init:
                ax.axhline(init[0], ls="--", color="gray", lw=1, label=f"random init {init[0]:.1f}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _finish(fig, path, title)


# ----------------------------------------------------------------------------- diagnostics over training

# panels of plot_diagnostics: (title, y label, does a diag/ key belong here)
DIAG_PANELS = (
    ("false negatives", "share", lambda k: k.endswith(("_fn_rate", "_fn_mass"))),
    ("cosine of negatives", "cosine", lambda k: k.endswith(("_fn_sim", "_tn_sim"))),
    ("soft targets: mass on the class", "share", lambda k: k.endswith(("_same_mass", "_same_share"))),
    ("soft targets: entropy", "nats", lambda k: k.endswith("_entropy")),
    ("weak-label graph", "share / size", lambda k: k.startswith("graph_comp_")),
    ("queues: staleness", "steps", lambda k: k.endswith(("_age_mean", "_age_max"))),
    ("queues: self-copies and duplicates", "share", lambda k: k.endswith(("_stale_self", "_duplicate_rate"))),
    ("BSIM: mixture vs source / partner, lowest and highest lambda bin", "cosine / corr",
     lambda k: k == "bsim_lam_corr" or (k.startswith("bsim_sim_") and k.endswith(("_b0", "_b4")))),
)


def diagnostic_keys(rows) -> list[str]:
    """The ``diag/<key>`` columns present in parsed metrics rows, without the prefix, sorted."""
    return sorted({k[5:] for r in rows for k in r if k.startswith("diag/")})


def plot_diagnostics(metrics_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """The false-negative diagnostics logged during training (``diag/*`` columns of ``metrics.csv``,
    every ``trainer.diagnose_every`` steps), one panel per family, against the step."""
    rows = read_metrics_csv(metrics_csv)
    keys = diagnostic_keys(rows)
    if not keys:
        raise DataError(f"{metrics_csv} has no diag/ column: the run logged no diagnostics "
                        "(trainer.diagnose_every=0, or a dataset without labels)")
    panels = [(t, y, [k for k in keys if pick(k)]) for t, y, pick in DIAG_PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise DataError(f"{metrics_csv}: no diag/ column belongs to a known panel")
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig = _figure(4.8 * cols, 3.4 * nrows)
    for i, (name, ylabel, members) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for key in members:
            xs, ys = _series(rows, f"diag/{key}", "step")
            ax.plot(xs, ys, "o-", ms=2, lw=1, label=key)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return _finish(fig, path, title)
