"""``results.json``: what a finished run reports, and what a stopped or interrupted one leaves."""

from __future__ import annotations

from pathlib import Path

from relssl.config import Config
from relssl.engine.optim import scaled_lr
from relssl.engine.rundir import environment


def _nanmax(values) -> float | None:
    finite = [v for v in values if v == v]
    return max(finite) if finite else None


def partial_results(cfg: Config, run_dir: Path, wall: float, **why) -> dict:
    """A run that did not finish: ``stopped`` (a non-finite loss) or ``interrupted`` (a signal)."""
    return {"run_dir": str(run_dir), "method": cfg.method["name"], "dataset": cfg.data.dataset,
            "finished": False, **why, "wall_seconds": round(wall, 2), "environment": environment()}


def batch_accounting(cfg: Config, processes: int) -> dict:
    """The global batch, the batch per process, the processes and the lr after scaling, so that runs
    on different numbers of devices compare."""
    per, glob = cfg.optim.batch_size, cfg.optim.batch_size * processes
    return {"batch": {"global": glob, "per_device": per, "processes": processes},
            "lr": {"base": cfg.optim.lr, "scaling": cfg.optim.lr_scaling, "scaled": scaled_lr(cfg.optim, glob)}}


def final_results(cfg: Config, run_dir: Path, trainer, uses_labels: bool, monitor, monitor_kind: str,
                  wall: float) -> dict:
    """The results of a finished run: steps, time, the monitor's first, last and best numbers and history."""
    history = monitor.history if monitor is not None else {}
    init = monitor.init if monitor is not None else {}
    knn_hist, knn_init = history.get("knn", []), init.get("knn")
    lf_hist, lf_init = history.get("labelfree", []), init.get("labelfree")
    return {
        "run_dir": str(run_dir), "method": cfg.method["name"], "dataset": cfg.data.dataset,
        "backbone": cfg.backbone.name, "epochs_done": trainer.current_epoch, "steps": trainer.global_step,
        "wall_seconds": round(wall, 2), **batch_accounting(cfg, trainer.world_size),
        "channels_last": bool(cfg.backbone.channels_last),  # the layout it trained in
        # a label-oracle control (plugins: [mask_false_negatives]) trains on class labels
        "uses_labels": uses_labels,
        "knn_init_top1": knn_init["top1"] if knn_init else None,
        "knn_last_top1": knn_hist[-1]["top1"] if knn_hist else None,
        "knn_last_top5": knn_hist[-1]["top5"] if knn_hist else None,
        "knn_best_top1": max(h["top1"] for h in knn_hist) if knn_hist else None,
        "knn_history": knn_hist,
        "knn_k": cfg.trainer.knn_k, "knn_t": cfg.trainer.knn_t,
        # the monitor that ran (knn, rankme or none) and the label-free numbers, logged under either
        "monitor": monitor_kind,
        "rankme_init": lf_init["rankme"] if lf_init else None,
        "rankme_last": lf_hist[-1]["rankme"] if lf_hist else None,
        "rankme_best": _nanmax(h["rankme"] for h in lf_hist),
        "rankme_history": lf_hist,
        "finished": True,
        "environment": environment(),
    }
