"""Run a pretraining job: ``pretrain(cfg)`` resolves the run (``engine/setup.py``), opens its
directory (``engine/rundir.py``), builds the trainer (``engine/trainer.py``), trains, and writes
``results.json`` (``engine/results.py``). See ``engine/rundir.py`` for what a run directory holds.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from relssl.config import Config, load_data
from relssl.data import DatasetSplits
from relssl.engine.lifecycle import GracefulStop, InterruptCheckpoint, check_resumable, write_json_atomic
from relssl.engine.loggers import log_final, record_ids
from relssl.engine.module import PretrainModule
from relssl.engine.results import final_results, partial_results
from relssl.engine.rundir import file_log, launched_as_rank_zero, open_run_dir, read_resume, run_dir_announced
from relssl.engine.setup import (
    build_monitor,
    check_against_data,
    check_sync_batchnorm,
    resolve_accelerator,
    resolve_monitor,
    resolve_precision,
)
from relssl.engine.trainer import build_trainer, wait_for_launched_processes
from relssl.errors import RunInterrupted, TrainingError

log = logging.getLogger("relssl")


def pretrain(cfg: Config | None, splits: DatasetSplits | None = None, resume: str | Path | None = None,
             quiet: bool = False, extra_callbacks: list | None = None, resume_overrides: list[str] | None = None,
             backbone: torch.nn.Module | None = None) -> dict:
    """Pretrain ``cfg``'s method; returns the results dict (also written to ``results.json``).

    ``backbone``: a module of your own that maps ``(B, C, H, W)`` images to ``(B, D)`` features,
    used instead of ``cfg.backbone.name`` (which becomes ``object:<its class>``); it is trained in
    place (with ``backbone.bn_splits`` > 1 a converted copy is). Evaluation and resumption of such a
    run take a new instance of the same class (``prepare(run, backbone=...)``,
    ``pretrain(None, resume=run, backbone=...)``); docs/backbones.md.

    ``resume`` is a run directory (or a checkpoint file) of an interrupted run: its config is
    used (``resume_overrides``: ``trainer.*`` changes, e.g. another number of devices), and training
    continues from its last checkpoint. Everything is checked before the run directory is created
    or changed.
    """
    point = read_resume(resume, resume_overrides) if resume is not None else None
    # a copy: building the backbone records its architecture in the config (the caller's object is left as it is)
    cfg = copy.deepcopy(point.cfg if point is not None else cfg)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
        # Lightning's launchers set torch's threads to cores / local processes unless OMP_NUM_THREADS is set
        os.environ["OMP_NUM_THREADS"] = str(cfg.trainer.threads)
    accelerator = resolve_accelerator(cfg)
    precision = resolve_precision(cfg, accelerator)
    sync_batchnorm = check_sync_batchnorm(cfg, accelerator)
    rank_zero = launched_as_rank_zero(cfg)
    splits = load_data(cfg) if splits is None else splits
    monitor_kind = resolve_monitor(cfg, splits)
    check_against_data(cfg, splits, monitor_kind)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = PretrainModule(cfg, splits, backbone)
    if point is not None:  # refused here, before anything in the run directory changes
        total = min(module.total_steps, cfg.optim.max_steps) if cfg.optim.max_steps else module.total_steps
        check_resumable(point.ckpt, module, cfg.to_dict(), point.run_dir, total)
    run_dir, lock = open_run_dir(cfg, point, rank_zero)
    try:
        with file_log(run_dir, rank_zero), run_dir_announced(run_dir, rank_zero):
            log.info("run directory %s; method %s; accelerator %s; precision %s", run_dir, cfg.method["name"],
                     accelerator, precision)
            monitor = build_monitor(cfg, splits, module, monitor_kind)
            trainer, last_ckpt = build_trainer(cfg, run_dir, monitor, monitor_kind, accelerator, precision,
                                               sync_batchnorm, cfg.trainer.progress_bar and not quiet, extra_callbacks)
            if rank_zero:
                record_ids(run_dir, trainer.loggers)
            wall = _fit(cfg, trainer, module, run_dir, point.ckpt_path if point is not None else None)
        if not trainer.is_global_zero:
            run_dir = Path(last_ckpt.dirpath).parent  # rank 0's, shared when the processes met
        results = final_results(cfg, run_dir, trainer, any(p.uses_labels for p in module.plugins), monitor,
                                monitor_kind, wall)
        if trainer.is_global_zero:
            write_json_atomic(run_dir / "results.json", results)
            log_final(trainer.loggers, results)
        return results
    finally:
        if lock is not None:
            lock.release()


def _fit(cfg: Config, trainer: L.Trainer, module: PretrainModule, run_dir: Path, ckpt_path) -> float:
    """``trainer.fit`` with the run's stops: a non-finite loss (``stopped`` in ``results.json``, the
    error raised again) and SIGTERM / SIGINT (a resumable checkpoint, ``interrupted`` in
    ``results.json``, :class:`RunInterrupted`; SIGINT and SIGUSR1 too). Returns the wall time of the fit."""
    t0 = time.perf_counter()
    stop = GracefulStop(trainer)
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.callbacks.append(InterruptCheckpoint(last, stop))
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    # the monitor runs every trainer.knn_every epochs: the best-checkpoint callback skips the others
    warnings.filterwarnings("ignore", message=".*monitor='(knn_top1|rankme)'.*could not find the monitored key.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # a mid-epoch resume is exact: relssl's sampler skips the batches the checkpoint had trained
    # (relssl_position; tests/test_interrupt.py), so Lightning's "not resumable" warning does not apply
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    try:
        with stop:
            trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except TrainingError as err:  # a non-finite loss: the reason goes to log.txt and results.json
        log.error("stopped: %s", err)
        if trainer.is_global_zero:
            write_json_atomic(run_dir / "results.json", partial_results(
                cfg, run_dir, time.perf_counter() - t0, stopped=str(err), steps=trainer.global_step))
        raise
    except SIGTERMException:
        why = stop.describe(trainer)
        if trainer.is_global_zero:
            write_json_atomic(run_dir / "results.json",
                              partial_results(cfg, run_dir, time.perf_counter() - t0, interrupted=why))
        raise RunInterrupted(
            f"interrupted by {why['signal']} at step {why['step']} (epoch {why['epoch']}); a resumable checkpoint is "
            f"in {last}: continue with relssl pretrain --resume {run_dir}", exit_code=128 + why["signum"]) from None
    if trainer.is_global_zero:
        wait_for_launched_processes(trainer)
    return time.perf_counter() - t0
