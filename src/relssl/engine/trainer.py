"""The Lightning trainer of a run: its callbacks (monitor, checkpoints, progress bar), loggers and
checkpoint I/O, and what rank 0 does after ``fit`` under Lightning's own launcher."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment

from relssl.config import Config
from relssl.engine.callbacks import LabelFreeProbe, RepresentationMonitor
from relssl.engine.checkpoint import AtomicCheckpointIO
from relssl.engine.loggers import build_loggers
from relssl.engine.optim import scaled_lr
from relssl.engine.setup import MONITOR_SELECTS
from relssl.errors import TrainingError

log = logging.getLogger("relssl")


def _no_advertisement(record: logging.LogRecord) -> bool:
    """Drop Lightning's "Tip: ... try installing litlogger" line from every run's console output."""
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


# Lightning's rank_zero_info logs through this logger (lightning.pytorch.utilities.rank_zero)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_advertisement)


def describe_monitor(cfg: Config, monitor: RepresentationMonitor, kind: str) -> None:
    lf = next((p for p in monitor.probes if isinstance(p, LabelFreeProbe)), None)
    label_free = f"RankMe / uniformity / alignment on {len(lf.images)} pretraining images" if lf else ""
    log.info("monitor %s (trainer.monitor=%s): %s%s", kind, cfg.trainer.monitor,
             " + ".join(x for x in ("kNN" if kind == "knn" else "", label_free) if x),
             f"; best.ckpt by {MONITOR_SELECTS[kind]}" if cfg.trainer.knn_every else "")


def build_trainer(cfg: Config, run_dir: Path, monitor: RepresentationMonitor | None, monitor_kind: str,
                  accelerator: str, precision: str, sync_batchnorm: bool, show_bar: bool,
                  extra_callbacks: list | None = None) -> tuple[L.Trainer, ModelCheckpoint]:
    """The trainer and its ``last.ckpt`` callback (every ``trainer.checkpoint_every`` epochs)."""
    callbacks: list = list(extra_callbacks or [])
    if monitor is not None:
        callbacks.append(monitor)
        describe_monitor(cfg, monitor, monitor_kind)
    ckpt_dir = run_dir / "checkpoints"
    # under DDP every rank holds these callbacks; they take rank 0's directory, and only rank 0 writes
    last_ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, save_last=False,
                                every_n_epochs=cfg.trainer.checkpoint_every, save_on_train_epoch_end=True,
                                enable_version_counter=False)
    callbacks.append(last_ckpt)
    if monitor is not None and cfg.trainer.knn_every:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR_SELECTS[monitor_kind],
                                         mode="max", save_top_k=1, save_on_train_epoch_end=True,
                                         enable_version_counter=False))
    if show_bar:
        # each refresh turns the bar's tensors (loss) into numbers, which waits for the GPU: on a GPU
        # refresh as often as the loggers write (trainer.log_every_n_steps), not every step
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.trainer.log_every_n_steps if accelerator == "gpu" else 1))
    loggers = build_loggers(cfg, run_dir)
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # relssl's own SIGUSR1 handling (a step checkpoint, exit 138: docs/distributed.md) instead of
        # Lightning's, which would save a checkpoint of its own and requeue the job itself
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        accelerator=accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        precision=precision, max_epochs=cfg.optim.epochs,
        max_steps=cfg.optim.max_steps if cfg.optim.max_steps else -1,
        logger=loggers, callbacks=callbacks, plugins=plugins,
        log_every_n_steps=cfg.trainer.log_every_n_steps, enable_progress_bar=show_bar,
        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
        default_root_dir=run_dir, benchmark=accelerator == "gpu", deterministic=False,
        sync_batchnorm=sync_batchnorm, gradient_clip_val=cfg.optim.grad_clip,
    )
    glob = cfg.optim.batch_size * trainer.world_size
    if trainer.world_size > 1:
        env = trainer.strategy.cluster_environment
        log.info("processes launched by %s (node rank %d of %d)", type(env).__name__, trainer.node_rank,
                 cfg.trainer.num_nodes)
    log.info("batch: global %d = %d per process x %d process(es) (%d devices x %d nodes); lr %g (%s scaling of %g); "
             "sync_batchnorm %s", glob, cfg.optim.batch_size, trainer.world_size, cfg.trainer.devices,
             cfg.trainer.num_nodes, scaled_lr(cfg.optim, glob), cfg.optim.lr_scaling, cfg.optim.lr, sync_batchnorm)
    return trainer, last_ckpt


def wait_for_launched_processes(trainer: L.Trainer, timeout: float = 300.0) -> None:
    """Rank 0 of a run Lightning launched itself waits for the other local processes to exit."""
    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
    for local_rank, proc in enumerate(procs, start=1):
        try:
            code = proc.wait(timeout=timeout)
        except Exception:  # noqa: BLE001 - a process that does not exit is reported, not waited for forever
            log.warning("process of local rank %d has not exited %.0f s after training", local_rank, timeout)
            continue
        if code != 0:
            raise TrainingError(f"the process of local rank {local_rank} exited with code {code}; "
                                "see its messages above")
