"""Callbacks: the online monitor of representation quality (``trainer.monitor``).

Every ``every`` epochs (``trainer.knn_every``) and after the last one, the backbone is evaluated
on the training device in eval mode by the monitor's probes; at the start of a fresh run
(``trainer.knn_at_start``) the randomly initialised backbone is evaluated the same way: the
baseline a trained model must beat.

* :class:`KNNProbe` (needs labels): features of the bank split (train set) and of the test split,
  weighted kNN top-1 / top-5 (k = 200, T = 0.1 by default), logged as ``knn_top1`` /
  ``knn_top5``; ``knn_init_top1`` for the random-init backbone.
* :class:`LabelFreeProbe` (no labels): a fixed, seeded, class-blind subset of the pretraining
  images; RankMe and uniformity of their features, alignment between two augmented views drawn
  with a fixed seed from the run's own first two view recipes (``relssl.metrics.labelfree``),
  logged as ``rankme`` / ``uniformity`` / ``alignment``; ``rankme_init`` ... for the random-init
  backbone. It runs whenever the monitor runs, beside kNN when there are labels.

The best checkpoint is chosen by ``knn_top1`` or ``rankme`` (``engine/setup.py``, ``engine/trainer.py``). Every probe's
history is saved in checkpoints (``state_dict``), so a resumed run reports all of it.

Under DDP the evaluation runs on rank 0 only and its result is broadcast to the other ranks, which
wait: every rank logs and records the same numbers, so the best-checkpoint decision (which all
ranks must agree on) is the same everywhere.
"""

from __future__ import annotations

import time

import lightning as L
import torch

from relssl.metrics.knn import extract_features, knn_accuracy
from relssl.metrics.labelfree import labelfree_metrics


def _feature_options(pl_module) -> dict:
    """How the module's backbone sees evaluation images: size, normalisation, device, memory format."""
    return dict(size=pl_module.eval_size, mean=pl_module.mean, std=pl_module.std, device=pl_module.device,
                channels_last=pl_module._channels_last())


class KNNProbe:
    """Weighted kNN accuracy of the test split against the bank split (labels needed)."""

    name = "knn"

    def __init__(self, bank_images, bank_labels, test_images, test_labels, num_classes: int,
                 k: int = 200, t: float = 0.1) -> None:
        self.bank_images, self.bank_labels = bank_images, bank_labels
        self.test_images, self.test_labels = test_images, test_labels
        self.num_classes, self.k, self.t = num_classes, k, t

    def __call__(self, pl_module) -> dict:
        kw = _feature_options(pl_module)
        dev = kw["device"]
        kw["autocast"] = torch.bfloat16 if dev.type == "cuda" else None
        bank = extract_features(pl_module.backbone, self.bank_images, **kw)
        test = extract_features(pl_module.backbone, self.test_images, **kw)
        acc = knn_accuracy(bank, self.bank_labels.to(dev), test, self.test_labels.to(dev), self.num_classes,
                           k=self.k, t=self.t)
        return {"top1": acc["top1"], "top5": acc["top5"]}

    @staticmethod
    def metrics(res: dict) -> dict:
        return {"knn_top1": res["top1"], "knn_top5": res["top5"]}

    @staticmethod
    def init_metrics(res: dict) -> dict:
        return {"knn_init_top1": res["top1"]}

    @staticmethod
    def describe(res: dict) -> str:
        return f"kNN of the randomly initialised backbone: top-1 {res['top1']:.2f}%"


class LabelFreeProbe:
    """RankMe, uniformity and alignment on a fixed set of pretraining images (no labels)."""

    name = "labelfree"
    keys = ("rankme", "uniformity", "alignment")

    def __init__(self, images, recipes, seed: int = 0, batch_size: int = 1024) -> None:
        self.images, self.recipes, self.seed, self.batch_size = images, list(recipes), seed, batch_size

    def __call__(self, pl_module) -> dict:
        return labelfree_metrics(pl_module.backbone, self.images, self.recipes, seed=self.seed,
                                 batch_size=self.batch_size, **_feature_options(pl_module))

    @classmethod
    def metrics(cls, res: dict) -> dict:
        return {k: res[k] for k in cls.keys if k in res}

    @classmethod
    def init_metrics(cls, res: dict) -> dict:
        return {f"{k}_init": v for k, v in cls.metrics(res).items()}

    @staticmethod
    def describe(res: dict) -> str:
        align = f", alignment {res['alignment']:.3f}" if "alignment" in res else ""
        return (f"label-free monitor of the randomly initialised backbone: RankMe {res['rankme']:.1f}, "
                f"uniformity {res['uniformity']:.3f}{align}")


class RepresentationMonitor(L.Callback):
    """Runs its probes (:class:`KNNProbe`, :class:`LabelFreeProbe`) at the monitor's cadence and logs them."""

    PROG_BAR = ("knn_top1", "rankme")

    def __init__(self, probes: list, every: int = 1, at_start: bool = True) -> None:
        names = [p.name for p in probes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"the monitor needs probes with distinct names, got {names}")
        self.probes, self.every, self.at_start = list(probes), every, at_start
        # per probe: one record per evaluation ({"epoch", "step", <results>, "seconds"}); saved in checkpoints
        self.history: dict[str, list[dict]] = {name: [] for name in names}
        self.init: dict[str, dict] = {}  # per probe: the randomly initialised backbone's results

    @property
    def state_key(self) -> str:
        # the key of the kNN-only monitor this class replaced: checkpoints written before it resume with their history
        return "KNNMonitor"

    def state_dict(self) -> dict:
        return {"history": self.history, "init": self.init}

    def load_state_dict(self, state: dict) -> None:
        history, init = state.get("history") or {}, state.get("init") or {}
        if isinstance(history, list):  # written by the kNN-only monitor: {"history": [...], "init_result": ...}
            history = {"knn": history}
            init = {"knn": state["init_result"]} if state.get("init_result") else {}
        self.history = {name: list(history.get(name, [])) for name in self.history}
        self.init = {name: res for name, res in init.items() if name in self.history}

    def evaluate(self, pl_module) -> dict[str, dict]:
        """Every probe's results (and the seconds it took) for the current backbone."""
        out = {}
        for probe in self.probes:
            t0 = time.perf_counter()
            res = probe(pl_module)
            out[probe.name] = {**res, "seconds": time.perf_counter() - t0}
        return out

    def evaluate_on_rank_zero(self, trainer, pl_module) -> dict[str, dict]:
        """:meth:`evaluate` on rank 0, its result given to every rank (all ranks must call this)."""
        res = self.evaluate(pl_module) if trainer.is_global_zero else None
        return trainer.strategy.broadcast(res, src=0)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.at_start and trainer.global_step == 0 and not self.init:
            self.init = self.evaluate_on_rank_zero(trainer, pl_module)
            metrics = {}
            for probe in self.probes:
                res = self.init[probe.name]
                pl_module.print(f"relssl: {probe.describe(res)}")
                metrics.update(probe.init_metrics(res))
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        last = epoch >= trainer.max_epochs or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        if not (self.every and epoch % self.every == 0) and not last:
            return
        res = self.evaluate_on_rank_zero(trainer, pl_module)
        for probe in self.probes:
            self.history[probe.name].append({"epoch": epoch, "step": trainer.global_step, **res[probe.name]})
            # the same value on every rank: the mean over the ranks (sync_dist) is that value
            for key, value in probe.metrics(res[probe.name]).items():
                pl_module.log(key, value, prog_bar=key in self.PROG_BAR, on_step=False, on_epoch=True,
                              sync_dist=True)
