"""What a run resolves before it trains: the accelerator and precision, checks against the data,
and the monitor (kNN on labelled data, label-free RankMe / uniformity / alignment otherwise)."""

from __future__ import annotations

import torch

from relssl.config import Config
from relssl.data import DatasetSplits
from relssl.data.core import subset_indices
from relssl.engine.callbacks import KNNProbe, LabelFreeProbe, RepresentationMonitor
from relssl.errors import ConfigError, DataError


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


def build_monitor(cfg: Config, splits: DatasetSplits, module, kind: str) -> RepresentationMonitor | None:
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


def check_sync_batchnorm(cfg: Config, accelerator: str) -> bool:
    """``trainer.sync_batchnorm``, checked against the processes and device of this run."""
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    if cfg.trainer.sync_batchnorm and accelerator == "cpu" and world > 1:
        raise ConfigError(f"trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm does not run on the CPU) "
                          f"but this run has {world} CPU processes; set trainer.sync_batchnorm=false or "
                          "trainer.accelerator=gpu")
    return cfg.trainer.sync_batchnorm
