"""Callbacks: the online kNN monitor.

Every ``every`` epochs (and after the last one) the backbone's features of the bank split
(train set) and the test split are computed on the training device in eval mode, and the weighted
kNN top-1 / top-5 (k = 200, T = 0.1 by default) is logged as ``knn_top1`` / ``knn_top5``; the best
checkpoint is chosen by ``knn_top1``. At the start of a fresh run the randomly initialised
backbone is evaluated the same way (``knn_init_top1``): the baseline a trained model must beat.

Under DDP the evaluation runs on rank 0 only and its result is broadcast to the other ranks, which
wait: every rank logs and records the same numbers, so the best-checkpoint decision (which all
ranks must agree on) is the same everywhere.
"""

from __future__ import annotations

import time

import lightning as L
import torch

from relssl.evaluate.knn import extract_features, knn_accuracy


class KNNMonitor(L.Callback):
    def __init__(self, bank_images, bank_labels, test_images, test_labels, num_classes: int,
                 every: int = 1, k: int = 200, t: float = 0.1, at_start: bool = True) -> None:
        self.bank_images, self.bank_labels = bank_images, bank_labels
        self.test_images, self.test_labels = test_images, test_labels
        self.num_classes, self.every, self.k, self.t, self.at_start = num_classes, every, k, t, at_start
        self.history: list[dict] = []  # one record per evaluation; saved in checkpoints
        self.init_result: dict | None = None

    def state_dict(self) -> dict:
        return {"history": self.history, "init_result": self.init_result}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.init_result = state.get("init_result")

    def evaluate(self, pl_module) -> dict:
        t0 = time.perf_counter()
        dev = pl_module.device
        autocast = torch.bfloat16 if dev.type == "cuda" else None
        kw = dict(size=pl_module.eval_size, mean=pl_module.mean, std=pl_module.std, device=dev,
                  channels_last=pl_module._channels_last(), autocast=autocast)
        bank = extract_features(pl_module.backbone, self.bank_images, **kw)
        test = extract_features(pl_module.backbone, self.test_images, **kw)
        acc = knn_accuracy(bank, self.bank_labels.to(dev), test, self.test_labels.to(dev), self.num_classes,
                           k=self.k, t=self.t)
        return {"top1": acc["top1"], "top5": acc["top5"], "seconds": time.perf_counter() - t0}

    def evaluate_on_rank_zero(self, trainer, pl_module) -> dict:
        """:meth:`evaluate` on rank 0, its result given to every rank (all ranks must call this)."""
        res = self.evaluate(pl_module) if trainer.is_global_zero else None
        return trainer.strategy.broadcast(res, src=0)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.at_start and trainer.global_step == 0 and self.init_result is None:
            self.init_result = self.evaluate_on_rank_zero(trainer, pl_module)
            pl_module.print(f"relssl: kNN of the randomly initialised backbone: top-1 {self.init_result['top1']:.2f}%")
            for logger in trainer.loggers:
                logger.log_metrics({"knn_init_top1": self.init_result["top1"]}, step=0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        last = epoch >= trainer.max_epochs or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        if not (self.every and epoch % self.every == 0) and not last:
            return
        res = self.evaluate_on_rank_zero(trainer, pl_module)
        self.history.append({"epoch": epoch, "step": trainer.global_step, **res})
        # the same value on every rank: the mean over the ranks (sync_dist) is that value
        pl_module.log("knn_top1", res["top1"], prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("knn_top5", res["top5"], on_step=False, on_epoch=True, sync_dist=True)
