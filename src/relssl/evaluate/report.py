"""One Markdown page per run: ``RUN_DIR/report.md``, with its PNGs beside it.

It gathers what a run directory holds: ``config.yaml``, ``results.json`` (pretraining and the
monitor: kNN, and the label-free RankMe / uniformity / alignment), ``metrics.csv`` (drawn as
``curves.png``: loss, learning rate, kNN top-1 and RankMe per epoch; its ``diag/*`` columns,
the false-negative diagnostics logged during training, as ``diagnostics.png`` with a table) and every evaluation the ``relssl eval`` commands saved in ``eval/`` (``*.json`` and
their PNGs: confusion matrices, t-SNE / UMAP plots). Numbers chosen on the test set (best over
epochs) are marked as optimistic; the baselines (random init, raw pixels) stand beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from relssl.errors import ConfigError, DataError


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _load_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out


def _label(res: dict, path: Path) -> str:
    return f"`eval/{path.name}`" + (" (random-init backbone)" if res.get("random_init") else "")


def _knn_section(res: dict, path: Path) -> tuple[list[str], list[list]]:
    lines = [f"### kNN: {_label(res, path)}", "",
             f"Bank {res.get('bank')} probe-train images, {res.get('test')} test images; L2-normalised backbone "
             f"features. `weighted`: k={res.get('k')}, T={res.get('t')}, exp(sim/T) votes; `nn1` / `nn20`: "
             "majority vote of the 1 / 20 nearest (MSF).", ""]
    rows, head = [], []
    names = list(res.get("results", {}))
    def pair(acc):
        return f"{_fmt(acc['top1'])} / {_fmt(acc.get('top5'))}"

    rows.append(["this backbone"] + [pair(res["results"][n]) for n in names])
    for base, accs in (res.get("baselines") or {}).items():
        rows.append([base.replace("_", " ")] + [pair(accs[n]) for n in names if n in accs])
    lines += _table(["features"] + [f"{n} top-1 / top-5 (%)" for n in names], rows) + [""]
    tag = " (random init)" if res.get("random_init") else ""
    label = {"weighted": f"kNN weighted (k={res.get('k')}, T={res.get('t')})", "nn1": "1-NN", "nn20": "20-NN vote"}
    for n in names:
        head.append([f"{label.get(n, n)}{tag}", res["results"][n]["top1"], "", path.name])
    for base, accs in (res.get("baselines") or {}).items():
        for n in names:
            if n in accs:
                head.append([f"{label.get(n, n)}, {base.replace('_', ' ')} baseline", accs[n]["top1"], "", path.name])
    return lines, head


def _probe_section(res: dict, path: Path, run_dir: Path) -> tuple[list[str], list[list]]:
    kind = res.get("protocol")
    r = res.get("recipe", {})
    tag = " (random init)" if res.get("random_init") else ""
    if kind == "linear":
        title = f"### Linear probe: {_label(res, path)}"
        what = (f"{r.get('schedule')} schedule, lr {r.get('lr')}, {r.get('epochs')} epochs, batch {r.get('batch_size')}, "
                f"augmentation {'on' if r.get('augment') else 'off (cached features)'}, feature normalisation "
                f"{r.get('feature_norm')}; "
                f"{res.get('train_size')} training / {res.get('test_size')} test images.")
        name = f"linear ({r.get('schedule')}){tag}"
    else:
        sub = res.get("subset", {})
        title = f"### Semi-supervised fine-tuning, {100 * sub.get('fraction', 0):g}% labels: {_label(res, path)}"
        what = (f"{sub.get('size')} labelled images ({sub.get('per_class')} per class, seed {sub.get('seed')}) of "
                f"{sub.get('of')}; {r.get('epochs')} epochs, batch {r.get('batch_size')}, lr {r.get('lr_backbone')} "
                f"backbone / {r.get('lr_head')} head, views `{r.get('augment')}` (our recipe: see docs/evaluation.md).")
        name = f"semi-sup {100 * sub.get('fraction', 0):g}%{tag}"
    lines = [title, "", what, ""]
    best = res.get("best_top1")
    lines += _table(["", "top-1 (%)", "top-5 (%)", "epoch"],
                    [["last epoch (headline)", res.get("top1"), res.get("top5"), len(res.get("history", [])) and res["history"][-1]["epoch"]]]
                    + ([["best over epochs (test-selected, optimistic)", best, res.get("best_top5"), res.get("best_epoch")]]
                       if best is not None else []))
    lines.append("")
    pc = res.get("per_class") or {}
    if pc and len(pc) <= 40:
        lines += ["Per-class accuracy (%): " + ", ".join(f"{k} {_fmt(v, 1)}" for k, v in pc.items()), ""]
    png = path.with_name(path.stem + "_confusion.png")
    if png.is_file():
        lines += [f"![confusion matrix]({png.relative_to(run_dir).as_posix()})", ""]
    head = [[name, res.get("top1"), best, path.name]]
    return lines, head


def _embedding_section(res: dict, path: Path, run_dir: Path) -> list[str]:
    png = path.with_suffix(".png")
    kind = {"tsne": "t-SNE", "umap": "UMAP"}.get(res.get("protocol"), res.get("protocol"))
    lines = [f"### {kind} of test embeddings: {_label(res, path)}", "",
             f"{res.get('n')} test images (class-balanced sample), L2-normalised backbone features.", ""]
    if png.is_file():
        lines += [f"![embedding]({png.relative_to(run_dir).as_posix()})", ""]
    return lines


def _diagnostics_section(rows, keys, run_dir: Path, title: str, plot) -> list[str]:
    """False-negative diagnostics logged during training: a PNG and first / last / mean per key."""
    lines = ["## False-negative diagnostics during training", "",
             "Logged every `trainer.diagnose_every` steps from the training batch (labels used for monitoring "
             "only); see docs/evaluation.md, \"Diagnostics\".", ""]
    try:
        png = plot(run_dir / "metrics.csv", run_dir / "diagnostics.png", title=title)
        lines += [f"![diagnostics]({png.name})", ""]
    except DataError as err:
        lines += [f"(not drawn: {err})", ""]
    table = []
    for key in keys:
        vals = [r[f"diag/{key}"] for r in rows if f"diag/{key}" in r and math.isfinite(r[f"diag/{key}"])]
        if vals:
            table.append([key, len(vals)] + [f"{v:.4g}" for v in (vals[0], vals[-1], sum(vals) / len(vals))])
    lines += _table(["diagnostic", "times logged", "first", "last", "mean"], table) + [""]
    return lines


def _labelfree_section(results: dict, init: dict, has_best: bool) -> list[str]:
    """The label-free monitor (results.json): RankMe, uniformity, alignment at the start, last and best epoch.

    ``init``: the random-init values logged to ``metrics.csv`` (``uniformity_init`` ...), if any;
    ``has_best``: the run kept a ``best.ckpt``."""
    hist = results.get("rankme_history") or []
    lines = ["## Label-free monitor", "",
             "On a fixed subset of the pretraining images, no labels: RankMe = effective rank of the backbone "
             "features (1 to their dimension; higher = more directions in use), uniformity = log mean "
             "exp(-2 ||z_i - z_j||^2) of the L2-normalised features (lower = more spread), alignment = mean "
             "||z_1 - z_2||^2 between two augmented views of an image (lower = more invariant). RankMe ranks epochs "
             "and runs of one method; it does not predict accuracy across methods (docs/evaluation.md, "
             "\"Label-free monitoring\").", ""]
    rows = []
    if results.get("rankme_init") is not None:
        rows.append(["random-init backbone", results["rankme_init"], _fmt(init.get("uniformity_init"), 3),
                     _fmt(init.get("alignment_init"), 3), 0])
    if hist:
        last = hist[-1]
        rows.append(["last epoch", last.get("rankme"), _fmt(last.get("uniformity"), 3), _fmt(last.get("alignment"), 3),
                     last.get("epoch")])
        finite = [h for h in hist if h.get("rankme") == h.get("rankme")]
        if finite:
            best = max(finite, key=lambda h: h["rankme"])
            tag = " (best.ckpt)" if has_best and results.get("monitor") == "rankme" else ""
            rows.append([f"highest RankMe{tag}", best["rankme"], _fmt(best.get("uniformity"), 3),
                         _fmt(best.get("alignment"), 3), best.get("epoch")])
    lines += _table(["", "RankMe", "uniformity", "alignment", "epoch"], rows) + [""]
    return lines


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` (and ``curves.png``) into ``run_dir``; returns the report's path."""
    from relssl.evaluate.plots import diagnostic_keys, plot_curves, plot_diagnostics, read_metrics_csv

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not ((run_dir / "config.yaml").is_file() or (run_dir / "results.json").is_file()):
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml or results.json); "
                          "pass a directory made by relssl pretrain")
    out = Path(out) if out is not None else run_dir / "report.md"
    results = _load_json(run_dir / "results.json") or {}
    cfg_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    cfg = yaml.safe_load(cfg_text) if cfg_text else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    method = results.get("method") or (cfg.get("method") or {}).get("name", "?")
    dataset = results.get("dataset") or (cfg.get("data") or {}).get("dataset", "?")
    backbone = results.get("backbone") or (cfg.get("backbone") or {}).get("name", "?")

    lines = [f"# Run report: {run_dir.name}", "",
             f"**{method}** on **{dataset}**, backbone **{backbone}**."]
    if results.get("stopped"):
        lines += ["", f"**Stopped**, not finished: {results['stopped']}"]
    elif results.get("interrupted"):
        stop = results["interrupted"]
        lines += ["", f"**Interrupted** by {stop.get('signal')} at step {stop.get('step')} (epoch {stop.get('epoch')}): "
                      f"not finished; `relssl pretrain --resume {run_dir}` continues it."]
    elif results:
        lines[-1] += (f" {results.get('epochs_done')} epochs, {results.get('steps')} steps, "
                      f"{_fmt(results.get('wall_seconds'), 0)} s of training.")
    else:
        lines += ["", "No `results.json`: the run has not finished (or was interrupted)."]
    if results.get("uses_labels"):
        lines += ["", "**Label-oracle control: this run trained on class labels** (plug-in "
                  "`mask_false_negatives`); it is an upper bound, not a self-supervised result."]
    lines.append("")

    headline: list[list] = []
    if results.get("knn_last_top1") is not None:
        k = (cfg.get("trainer") or {}).get("knn_k", 200)
        t = (cfg.get("trainer") or {}).get("knn_t", 0.1)
        headline.append([f"kNN monitor (k={k}, T={t}), last epoch", results["knn_last_top1"],
                         results.get("knn_best_top1"), "results.json"])
        if results.get("knn_init_top1") is not None:
            headline.append(["kNN monitor, random-init backbone", results["knn_init_top1"], None, "results.json"])

    sections: list[str] = []
    foreign: list[str] = []
    eval_dir = run_dir / "eval"
    for path in sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []:
        res = _load_json(path)
        if res is None or "protocol" not in res:
            continue
        if res.get("method", method) != method or res.get("backbone", backbone) != backbone:
            # a result of another run's checkpoint copied here: never under this run's name
            foreign.append(f"`eval/{path.name}` ({res.get('method')}, {res.get('backbone')}, "
                           f"checkpoint {res.get('checkpoint')})")
            continue
        kind = res["protocol"]
        if kind == "knn":
            sec, head = _knn_section(res, path)
        elif kind in ("linear", "semisup"):
            sec, head = _probe_section(res, path, run_dir)
        elif kind in ("tsne", "umap"):
            sec, head = _embedding_section(res, path, run_dir), []
        else:
            continue
        sections += sec
        headline += head

    if foreign:
        lines += [f"**Left out**: evaluation results that are not of this {method} / {backbone} run: "
                  + "; ".join(foreign) + ".", ""]
    lines += ["## Metrics", ""]
    if headline:
        lines += _table(["metric", "top-1 (%)", "best over epochs (%)", "source"], headline)
        lines += ["", "Top-1 is the last epoch's. \"Best over epochs\" picks the epoch on the test set, as the MSVQ, "
                  "ASCL and WCL repositories and Lightly's kNN tables do: it is optimistic. A result means "
                  "something only well above its random-init and raw-pixel baselines.", ""]
    elif results.get("monitor") == "rankme":
        lines += ["No accuracy: this run's monitor was label-free (`monitor: rankme` in results.json); on a "
                  "labelled dataset, run `relssl eval knn|linear|semisup RUN_DIR`.", ""]
    else:
        lines += ["No metrics yet: run `relssl eval knn|linear|semisup RUN_DIR`.", ""]
    if results.get("rankme_history") or results.get("rankme_init") is not None:
        init: dict = {}
        if (run_dir / "metrics.csv").is_file():
            for row in read_metrics_csv(run_dir / "metrics.csv"):
                init.update({k: v for k, v in row.items() if k.endswith("_init")})
        lines += _labelfree_section(results, init, (run_dir / "checkpoints" / "best.ckpt").is_file())

    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        try:
            png = plot_curves(metrics, run_dir / "curves.png", title=f"{method} on {dataset}")
            lines += ["## Training curves", "", f"![training curves]({png.name})", ""]
        except DataError as err:
            lines += ["## Training curves", "", f"(not drawn: {err})", ""]
        rows = read_metrics_csv(metrics)
        keys = diagnostic_keys(rows)
        if keys:
            lines += _diagnostics_section(rows, keys, run_dir, f"{method} on {dataset}", plot_diagnostics)

    if sections:
        lines += ["## Evaluations", ""] + sections
    if results.get("knn_history"):
        lines += ["## kNN monitor per epoch", ""]
        lines += _table(["epoch", "step", "top-1 (%)", "top-5 (%)"],
                        [[h.get("epoch"), h.get("step"), h.get("top1"), h.get("top5")] for h in results["knn_history"]])
        lines.append("")
    if results.get("rankme_history"):
        lines += ["## Label-free monitor per epoch", ""]
        lines += _table(["epoch", "step", "RankMe", "uniformity", "alignment"],
                        [[h.get("epoch"), h.get("step"), h.get("rankme"), _fmt(h.get("uniformity"), 3),
                          _fmt(h.get("alignment"), 3)] for h in results["rankme_history"]])
        lines.append("")
    if cfg_text:
        lines += ["## Config", "", "```yaml", cfg_text.rstrip(), "```", ""]
    env = results.get("environment")
    if env:
        lines += ["## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    try:
        out.write_text("\n".join(lines))
    except OSError as err:
        raise ConfigError(f"cannot write {out}: {err.strerror or err}") from err
    return out
