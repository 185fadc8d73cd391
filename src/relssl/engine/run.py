"""Run a pretraining job: run directory, Lightning trainer, checkpoints, logs, results.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/`` (``last.ckpt``,
``best.ckpt`` by the monitor's number: kNN top-1, or RankMe on unlabelled data; one per epoch is not
kept), ``metrics.csv``, ``tb/`` (TensorBoard events), ``log.txt`` and, at the end, ``results.json``.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from relssl.config import Config, config_from_dict, dump_config, read_yaml
from relssl.data import DatasetSplits, load_dataset
from relssl.data.core import subset_indices
from relssl.engine.callbacks import KNNProbe, LabelFreeProbe, RepresentationMonitor
from relssl.engine.checkpoint import AtomicCheckpointIO, load_checkpoint_file
from relssl.engine.lifecycle import (
    AppendingCSVLogger,
    GracefulStop,
    InterruptCheckpoint,
    RunLock,
    WriteCheckedTensorBoardLogger,
    check_resumable,
    write_json_atomic,
)
from relssl.engine.module import PretrainModule
from relssl.errors import ConfigError, DataError, RunInterrupted, TrainingError

log = logging.getLogger("relssl")


def resolve_precision(cfg: Config, accelerator: str) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "bf16-mixed" if accelerator == "gpu" else "32-true"


def resolve_accelerator(cfg: Config) -> str:
    acc = cfg.trainer.accelerator
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator=gpu but no CUDA device is available; use trainer.accelerator=cpu")
        return "gpu"
    return "cpu"


def load_data(cfg: Config) -> DatasetSplits:
    """The dataset a config names, with its size, memory limit and loader options."""
    d = cfg.data
    return load_dataset(d.dataset, d.root, download=d.download, size=d.image_size,
                        memory_limit=int(d.memory_limit_gb * 2**30), **d.options)


def eval_image_size(cfg: Config, info) -> int:
    """``data.eval_size``, else the native size if it is at least the crop size, else the crop size."""
    if cfg.data.eval_size:
        return cfg.data.eval_size
    crop = cfg.data.crop_size or info.crop_size
    native = cfg.data.image_size or info.native_size
    return native if native >= crop else crop


MAX_UPSCALE = 8  # crops and evaluation images at most this many times the stored images' size


def check_against_data(cfg: Config, splits: DatasetSplits, monitor_kind: str) -> None:
    """Values that can only be checked once the data is known, before any work: image sizes that would
    upscale absurdly (a 10,000-px crop of a 28-px image is a 34 GB batch later) and a kNN k larger
    than the bank it searches."""
    info = splits.info
    native = cfg.data.image_size or info.native_size
    for key, value in (("crop_size", cfg.data.crop_size), ("eval_size", cfg.data.eval_size)):
        if value is not None and value > MAX_UPSCALE * native:
            raise ConfigError(f"data.{key}={value} is more than {MAX_UPSCALE}x the {native}-px images of "
                              f"{cfg.data.dataset}; use at most {MAX_UPSCALE * native} (or resize the stored images "
                              "with data.image_size)")
    if monitor_kind == "knn":
        bank = len(splits.bank) if cfg.data.bank_subset is None else min(cfg.data.bank_subset, len(splits.bank))
        if cfg.trainer.knn_k > bank:
            raise ConfigError(f"trainer.knn_k={cfg.trainer.knn_k} is larger than the kNN bank ({bank} images); lower "
                              "trainer.knn_k or enlarge data.bank_subset")


# the number each monitor chooses best.ckpt by (the higher, the better)
MONITOR_SELECTS = {"knn": "knn_top1", "rankme": "rankme"}


def resolve_monitor(cfg: Config, splits: DatasetSplits) -> str:
    """The monitor this run uses: ``knn``, ``rankme`` or ``none`` (``trainer.monitor`` with ``auto`` resolved).

    ``none`` also when the cadence never runs it (``trainer.knn_every=0 trainer.knn_at_start=false``).
    ``knn`` on a dataset whose bank or test split has no labels is a one-line :class:`DataError`.
    """
    t = cfg.trainer
    if t.monitor == "none" or not (t.knn_every or t.knn_at_start):
        return "none"
    if t.monitor == "auto" and not splits.labelled and t.monitor_subset == 0:
        raise ConfigError(f"{cfg.data.dataset} has no labels, so the run is monitored label-free, but "
                          "trainer.monitor_subset=0 turns that off; set trainer.monitor_subset >= 2 or trainer.monitor=none")
    if t.monitor == "auto":
        return "knn" if splits.labelled else "rankme"
    if t.monitor == "knn" and not splits.labelled:
        # the loaders' note says why there are no labels (its advice is for monitor=auto, not repeated)
        note = splits.extra.get("labels_note", "").split("; the run is monitored")[0]
        raise DataError(f"{cfg.data.dataset}: trainer.monitor=knn needs labels for the bank and test splits"
                        f"{' (' + note + ')' if note else ''}; set trainer.monitor=auto or trainer.monitor=rankme "
                        "(label-free), or trainer.monitor=none")
    return t.monitor


def build_monitor(cfg: Config, splits: DatasetSplits, module: PretrainModule, kind: str) -> RepresentationMonitor | None:
    """The monitor callback of ``kind``: the label-free probe always, the kNN probe under ``knn``."""
    if kind == "none":
        return None
    probes: list = []
    if kind == "knn":
        bank = splits.bank.subset(cfg.data.bank_subset, seed=cfg.seed).materialize()
        test = splits.test.subset(cfg.data.test_subset, seed=cfg.seed).materialize()
        probes.append(KNNProbe(bank.images, bank.labels, test.images, test.labels, splits.info.num_classes,
                               k=cfg.trainer.knn_k, t=cfg.trainer.knn_t))
    n = cfg.trainer.monitor_subset
    if n == 0:  # no label-free probe beside kNN (resolve_monitor refused it for a label-free monitor)
        return RepresentationMonitor(probes, every=cfg.trainer.knn_every, at_start=cfg.trainer.knn_at_start)
    pre = module.pretrain_set  # the images this run trains on (data.subset applied)
    if n is not None and n < len(pre):
        pre = pre.take(subset_indices(len(pre), None, n, seed=cfg.seed))  # class-blind, seeded
    # alignment: the views of the method's first two recipes as configured at the start (fixed over the run)
    probes.append(LabelFreeProbe(pre.materialize().images, module.recipes[:2], seed=cfg.seed))
    return RepresentationMonitor(probes, every=cfg.trainer.knn_every, at_start=cfg.trainer.knn_at_start)


def make_run_dir(cfg: Config) -> Path:
    name = cfg.name or f"{cfg.data.dataset}-{cfg.method['name']}-{datetime.now():%Y%m%d-%H%M%S}"
    base = Path(cfg.output_dir).expanduser()
    run_dir = base / name
    n = 2
    while run_dir.exists():
        run_dir = base / f"{name}-{n}"
        n += 1
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"cannot create run directory {run_dir}: {err.strerror}; set output_dir to a writable place") from err
    return run_dir


# rank 0's run directory, handed to the processes Lightning's launcher starts (they re-run the command)
RUN_DIR_ENV = "RELSSL_RUN_DIR"
# where launchers announce a process's rank before any process group exists (Lightning, torchrun, SLURM, LSF)
_RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launched_as_rank_zero(cfg: Config) -> bool:
    """Whether this process is global rank 0 of its run, judged from the launcher's environment.

    Only rank 0 creates and writes the run directory (``config.yaml``, ``log.txt``, checkpoints,
    logs, ``results.json``). A single-process run is always rank 0, whatever the environment.
    """
    if cfg.trainer.devices * cfg.trainer.num_nodes == 1:
        return True
    for key in _RANK_ENV:
        value = os.environ.get(key, "").strip()
        if value.isdigit() and int(value) != 0:
            return False
    return True


def check_sync_batchnorm(cfg: Config, accelerator: str) -> bool:
    """``trainer.sync_batchnorm``, checked against the processes and device of this run."""
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    if cfg.trainer.sync_batchnorm and accelerator == "cpu" and world > 1:
        raise ConfigError(f"trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm does not run on the CPU) "
                          f"but this run has {world} CPU processes; set trainer.sync_batchnorm=false or "
                          "trainer.accelerator=gpu")
    return cfg.trainer.sync_batchnorm


def _wait_for_launched_processes(trainer: L.Trainer, timeout: float = 300.0) -> None:
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


def _setup_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("relssl", "lightning.pytorch"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    return handler


def environment() -> dict:
    import lightning
    import torchvision

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "lightning": lightning.__version__, "device": dev, "cpus": os.cpu_count(),
            "date": datetime.now().isoformat(timespec="seconds")}


def _nanmax(values) -> float | None:
    finite = [v for v in values if v == v]
    return max(finite) if finite else None


def pretrain(cfg: Config, splits: DatasetSplits | None = None, resume: str | Path | None = None,
             quiet: bool = False, extra_callbacks: list | None = None) -> dict:
    """Pretrain ``cfg``'s method; returns the results dict (also written to ``results.json``).

    ``resume`` is a run directory (or a checkpoint file) of an interrupted run: its config is
    used, and training continues from its last checkpoint.
    """
    ckpt_path = None
    if resume is not None:
        resume = Path(resume)
        if resume.is_file():
            ckpt_path, run_dir = resume, resume.parent.parent
        else:
            run_dir, ckpt_path = resume, resume / "checkpoints" / "last.ckpt"
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {resume}: no config.yaml in {run_dir}; pass a run directory made by relssl pretrain")
        if not Path(ckpt_path).is_file():
            raise ConfigError(f"--resume {resume}: no checkpoint at {ckpt_path} (the run stopped before its first checkpoint); start it again")
        ckpt = load_checkpoint_file(ckpt_path)  # a corrupt checkpoint fails here, before anything is written
        cfg = config_from_dict(read_yaml(run_dir / "config.yaml"))
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    accelerator = resolve_accelerator(cfg)
    precision = resolve_precision(cfg, accelerator)
    sync_batchnorm = check_sync_batchnorm(cfg, accelerator)
    rank_zero = launched_as_rank_zero(cfg)
    if splits is None:
        splits = load_data(cfg)
    monitor_kind = resolve_monitor(cfg, splits)
    check_against_data(cfg, splits, monitor_kind)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = PretrainModule(cfg, splits)
    total = min(module.total_steps, cfg.optim.max_steps) if cfg.optim.max_steps else module.total_steps
    if resume is not None:  # refused here, before anything in the run directory changes
        check_resumable(ckpt, module, cfg.to_dict(), run_dir, total)
    if resume is None and rank_zero:
        run_dir = make_run_dir(cfg)
        lock = RunLock(run_dir).acquire()
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    elif resume is None:
        # another rank: rank 0 made the directory. Lightning's launcher passes it on; under an external
        # launcher (SLURM, torchrun) this guess is only a placeholder: nothing here is written by this
        # process, and the checkpoint callbacks take rank 0's directory when the processes meet.
        run_dir = Path(os.environ.get(RUN_DIR_ENV) or Path(cfg.output_dir).expanduser() / (cfg.name or "unnamed"))
        lock = None
    else:
        lock = RunLock(run_dir).acquire() if rank_zero else None
    try:
        return _train(cfg, splits, module, run_dir, ckpt_path, rank_zero, accelerator, precision, sync_batchnorm,
                      monitor_kind, quiet, extra_callbacks)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, splits: DatasetSplits, module: PretrainModule, run_dir: Path, ckpt_path, rank_zero: bool,
           accelerator: str, precision: str, sync_batchnorm: bool, monitor_kind: str, quiet: bool,
           extra_callbacks: list | None) -> dict:
    """``pretrain`` from the prepared module and run directory on: callbacks, trainer, fit, results."""
    handler = _setup_file_log(run_dir) if rank_zero else None
    log.info("run directory %s; method %s; accelerator %s; precision %s", run_dir, cfg.method["name"], accelerator, precision)

    callbacks: list = list(extra_callbacks or [])
    monitor = build_monitor(cfg, splits, module, monitor_kind)
    if monitor is not None:
        callbacks.append(monitor)
        lf = next((p for p in monitor.probes if isinstance(p, LabelFreeProbe)), None)
        label_free = f"RankMe / uniformity / alignment on {len(lf.images)} pretraining images" if lf else ""
        log.info("monitor %s (trainer.monitor=%s): %s%s", monitor_kind, cfg.trainer.monitor,
                 " + ".join(x for x in ("kNN" if monitor_kind == "knn" else "", label_free) if x),
                 f"; best.ckpt by {MONITOR_SELECTS[monitor_kind]}" if cfg.trainer.knn_every else "")
    ckpt_dir = run_dir / "checkpoints"
    # under DDP every rank holds these callbacks; they take rank 0's directory, and only rank 0 writes
    last_ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, save_last=False,
                                every_n_epochs=cfg.trainer.checkpoint_every, save_on_train_epoch_end=True,
                                enable_version_counter=False)
    callbacks.append(last_ckpt)
    if monitor is not None and cfg.trainer.knn_every:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR_SELECTS[monitor_kind], mode="max",
                                         save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False))
    show_bar = cfg.trainer.progress_bar and not quiet
    if show_bar:
        # each refresh turns the bar's tensors (loss) into numbers, which waits for the GPU: on a GPU
        # refresh as often as the loggers write (trainer.log_every_n_steps), not every step
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.trainer.log_every_n_steps if accelerator == "gpu" else 1))
    loggers = [AppendingCSVLogger(run_dir, name="", version=""), WriteCheckedTensorBoardLogger(run_dir, name="tb", version="")]
    trainer = L.Trainer(
        accelerator=accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        precision=precision, max_epochs=cfg.optim.epochs,
        max_steps=cfg.optim.max_steps if cfg.optim.max_steps else -1,
        logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        log_every_n_steps=cfg.trainer.log_every_n_steps, enable_progress_bar=show_bar,
        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
        default_root_dir=run_dir, benchmark=accelerator == "gpu", deterministic=False,
        sync_batchnorm=sync_batchnorm,
    )
    if trainer.world_size > 1:
        log.info("world size %d (%d devices x %d nodes); global batch %d; sync_batchnorm %s", trainer.world_size,
                 cfg.trainer.devices, cfg.trainer.num_nodes, cfg.optim.batch_size * trainer.world_size, sync_batchnorm)
    # the processes Lightning launches re-run this command: they take rank 0's run directory from here
    previous_env = os.environ.get(RUN_DIR_ENV)
    if rank_zero:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    t0 = time.perf_counter()
    stop = GracefulStop(trainer)
    trainer.callbacks.append(InterruptCheckpoint(ckpt_dir / "last.ckpt", stop))
    try:
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # the monitor runs every trainer.knn_every epochs: the best-checkpoint callback skips the others
        warnings.filterwarnings("ignore", message=".*monitor='(knn_top1|rankme)'.*could not find the monitored key.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        try:
            with stop:
                trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
        except TrainingError as err:  # a non-finite loss: the reason goes to log.txt and results.json
            log.error("stopped: %s", err)
            if trainer.is_global_zero:
                write_json_atomic(run_dir / "results.json", {
                    "run_dir": str(run_dir), "method": cfg.method["name"], "dataset": cfg.data.dataset,
                    "finished": False, "stopped": str(err), "steps": trainer.global_step,
                    "wall_seconds": round(time.perf_counter() - t0, 2), "environment": environment()})
            raise
        except SIGTERMException:
            interrupted = stop.describe(trainer)
            if trainer.is_global_zero:
                partial = {"run_dir": str(run_dir), "method": cfg.method["name"], "dataset": cfg.data.dataset,
                           "finished": False, "interrupted": interrupted,
                           "wall_seconds": round(time.perf_counter() - t0, 2), "environment": environment()}
                write_json_atomic(run_dir / "results.json", partial)
            raise RunInterrupted(
                f"interrupted by {interrupted['signal']} at step {interrupted['step']} (epoch {interrupted['epoch']}); "
                f"a resumable checkpoint is in {ckpt_dir / 'last.ckpt'}: continue with relssl pretrain --resume {run_dir}",
                exit_code=128 + interrupted["signum"]) from None
        if trainer.is_global_zero:
            _wait_for_launched_processes(trainer)
    finally:
        if rank_zero:
            if previous_env is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = previous_env
        if handler is not None:
            for name in ("relssl", "lightning.pytorch"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        run_dir = Path(last_ckpt.dirpath).parent  # rank 0's, shared when the processes met
    history = monitor.history if monitor is not None else {}
    init = monitor.init if monitor is not None else {}
    knn_hist, knn_init = history.get("knn", []), init.get("knn")
    lf_hist, lf_init = history.get("labelfree", []), init.get("labelfree")
    results = {
        "run_dir": str(run_dir), "method": cfg.method["name"], "dataset": cfg.data.dataset,
        "backbone": cfg.backbone.name, "epochs_done": trainer.current_epoch, "steps": trainer.global_step,
        "wall_seconds": round(wall, 2),
        # a label-oracle control (plugins: [mask_false_negatives]) trains on class labels
        "uses_labels": any(getattr(p, "uses_labels", False) for p in module.plugins),
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
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "results.json", results)
    return results

