"""The one LightningModule that trains any method.

It owns the device-resident training images, draws the views of each batch on the device (one
batched call per view, random per sample, seeded by (seed, step, rank) so a resumed run draws
exactly the same views), hands them to the method, logs, and calls the method's
``after_optimizer_step`` (EMA teachers) after every optimizer step. It knows nothing of any one
method.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from relssl.augment import make_views
from relssl.config import Config, backbone_sizes, build_backbone_from_config
from relssl.data import DatasetSplits, EpochBatchSampler, IndexBatchDataset
from relssl.data.filebacked import DecodedBatchDataset
from relssl.engine.guard import LossGuard
from relssl.engine.optim import build_optimizer, build_scheduler
from relssl.engine.rng import restore_rng_state, rng_state
from relssl.engine.views import step_seed, view_recipes
from relssl.errors import ConfigError
from relssl.methods import StepInfo, build_method
from relssl.methods.diagnose import step_diagnostics
from relssl.methods.plugins import build_plugins


class PretrainModule(L.LightningModule):
    def __init__(self, cfg: Config, splits: DatasetSplits, backbone: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        info = splits.info
        self.info = info
        self.crop_size, self.eval_size = backbone_sizes(cfg, info)
        self.mean, self.std = info.mean, info.std
        built = build_backbone_from_config(cfg, info.channels, info.maxpool, sizes=(self.crop_size, self.eval_size),
                                           module=backbone)
        # the config records the architecture as built (e.g. a ViT's img_size / patch_size chosen for the
        # crop), so that evaluation and export rebuild exactly this model from the checkpoint alone
        cfg.backbone.kwargs = dict(built.arch.get("kwargs", {}))
        if backbone is not None:
            cfg.backbone.name = f"object:{built.arch['model']}"
        self.backbone_arch = built.arch
        self.save_hyperparameters({"config": cfg.to_dict()})
        self.method = build_method(cfg.method, built.module, built.feat_dim)
        self.plugins = torch.nn.ModuleList(build_plugins(cfg.plugins, self.method))
        self.view_names, self.recipes = view_recipes(cfg, self.crop_size)
        pre = splits.pretrain.subset(cfg.data.subset, seed=cfg.seed)
        # plain attributes, not buffers: the data never goes into checkpoints. A file-backed
        # split stays on disk: DataLoader workers decode whole index batches (relssl.data).
        self.pretrain_set = pre
        self.file_backed = getattr(pre, "is_file_backed", False)
        self.train_images = None if self.file_backed else pre.images
        self.train_labels = pre.labels
        self.splits = splits
        self.guard = LossGuard(cfg.method["name"])
        if any(p.uses_labels for p in self.plugins) and self.train_labels is None:
            raise ConfigError(f"plugin mask_false_negatives trains on class labels, but the pretraining split of "
                              f"{cfg.data.dataset} has none; remove the plug-in or use a labelled dataset")
        self._drop_update = False  # a step skipped on every rank under DDP (nan_policy=skip)
        self._skipped = False  # this step was skipped: no EMA update after it either
        self._batches_done = 0  # batches trained in the current epoch (saved: a mid-epoch resume skips them)
        self._resume_position: dict | None = None
        self.steps_per_epoch = len(pre) // (cfg.optim.batch_size * max(1, self._world_size_hint()))
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"optim.batch_size {cfg.optim.batch_size} is larger than the pretraining set ({len(pre)} images)"
            )

    def _world_size_hint(self) -> int:
        return self.cfg.trainer.devices * self.cfg.trainer.num_nodes

    @property
    def backbone(self):
        return self.method.backbone

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.optim.epochs

    # ------------------------------------------------------------------ data
    def train_dataloader(self) -> DataLoader:
        n = len(self.pretrain_set)
        sampler = EpochBatchSampler(n, self.cfg.optim.batch_size, seed=self.cfg.seed,
                                    rank=self.global_rank, world_size=self.trainer.world_size)
        if self._resume_position is not None:  # a checkpoint written mid-epoch (SIGTERM / SIGINT)
            sampler.resume_at(self._resume_position["epoch"], self._resume_position["batches_done"])
        if self.file_backed:
            workers = self.cfg.data.num_workers
            return DataLoader(DecodedBatchDataset(self.pretrain_set), sampler=sampler, batch_size=None,
                              num_workers=workers, pin_memory=self.device.type == "cuda",
                              persistent_workers=workers > 0)
        return DataLoader(IndexBatchDataset(n), sampler=sampler, batch_size=None, num_workers=0)

    def on_fit_start(self) -> None:
        if not self.file_backed:
            self.train_images = self.train_images.to(self.device)
        if self.train_labels is not None:
            self.train_labels = self.train_labels.to(self.device)
        self._t_last = None

    def _channels_last(self) -> bool:
        """Weights and views in channels_last (NHWC) when ``backbone.channels_last`` (the default), on
        every device: cuDNN's NHWC kernels are the fast ones with bf16, and on the CPU oneDNN's are
        too (a SimCLR / MoCo v2 step 1.19-1.54x faster with the conv nets, 1.25x with ResNet-18 on 2
        cores: ``benchmarks/profile_step.py --options``)."""
        return bool(self.cfg.backbone.channels_last)

    def configure_model(self) -> None:
        # weights and the views in the same layout, before DDP builds its gradient buckets and before
        # the optimizer sees the parameters (the Parameter objects stay the same; idempotent)
        if self._channels_last():
            self.method.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ training
    def _step_info(self, idx: torch.Tensor | None, generator: torch.Generator | None) -> StepInfo:
        step = self.global_step
        labels = None if (self.train_labels is None or idx is None) else self.train_labels[idx]
        every = self.cfg.trainer.diagnose_every
        return StepInfo(step=step, progress=min(1.0, step / max(1, self.total_steps)), index=idx,
                        labels=labels, generator=generator,
                        diagnose=bool(every) and labels is not None and step % every == 0)

    def _log_diagnostics(self, out: dict, info: StepInfo) -> None:
        """Log this step's false-negative diagnostics as ``diag/<key>`` (``methods.diagnose.step_diagnostics``),
        straight to the loggers at this step (Lightning's ``self.log`` would drop steps off its
        ``log_every_n_steps`` grid); one host sync per diagnostic step
        (``benchmarks/diagnostics_overhead.py`` measures the cost)."""
        values = step_diagnostics(self.method, out, info)
        if not values:
            return
        keys = list(values)
        flat = torch.stack([values[k].detach().float().reshape(()).to(self.device) for k in keys]).cpu().tolist()
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics({f"diag/{k}": v for k, v in zip(keys, flat)}, step=info.step)

    def training_step(self, batch, batch_idx: int):
        self.guard.check(self.trainer)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(step_seed(self.cfg.seed, self.global_step, self.global_rank))
        if self.file_backed:  # (decoded uint8 images, their indices) from the loader workers
            images, idx = batch
        else:  # indices into the device-resident images
            idx = batch
            images = self.train_images[idx]
        views = make_views(images, self.recipes, self.mean, self.std, gen,
                           memory_format=torch.channels_last if self._channels_last() else None)
        info = self._step_info(idx, gen)
        out = self.method.training_step(views, info)
        for plugin in self.plugins:
            out = plugin.after_host_step(self.method, views, info, out)
        if info.diagnose:
            self._log_diagnostics(out, info)
        loss = out["loss"]
        if self.cfg.trainer.nan_policy == "skip":
            if not LossGuard.finite_now(loss, self.trainer):
                self.print(f"relssl: non-finite loss at step {self.global_step} ({self.cfg.method['name']}); step skipped")
                self.log("skipped_steps", 1.0, reduce_fx="sum", on_step=False, on_epoch=True)
                self._skipped = True
                if self.trainer.world_size > 1:
                    # Lightning refuses None under DDP: back-propagate a zero that reaches every trainable
                    # parameter (DDP's gradient all-reduce completes on every rank), then drop the update
                    # in on_before_optimizer_step, as one process does
                    self._drop_update = True
                    return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)
                return None
        else:  # checked one step later, so the check never stalls the device pipeline
            self.guard.defer(loss, self.global_step)
        for key, value in out.items():
            if key.startswith("_"):  # tensors handed to plug-ins, not metrics
                continue
            self.log(f"train/{key}" if key != "loss" else "loss", value.detach().float(),
                     prog_bar=key == "loss", on_step=True, on_epoch=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._drop_update:  # no gradients: the optimizer leaves every parameter and its state alone
            optimizer.zero_grad(set_to_none=True)
            self._drop_update = False

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._batches_done += 1  # skipped steps too: the sampler has moved past them
        if outputs is None or self._skipped:  # Lightning hands a skipped step's hook {} (not None)
            self._skipped = False
            return
        # global_step has already advanced past the optimizer step that just ran
        info = StepInfo(step=self.global_step, progress=min(1.0, self.global_step / max(1, self.total_steps)))
        self.method.after_optimizer_step(info)
        now = time.perf_counter()
        if self._t_last is not None:
            dt = now - self._t_last
            self._ema_dt = dt if getattr(self, "_ema_dt", None) is None else 0.9 * self._ema_dt + 0.1 * dt
            ips = self.cfg.optim.batch_size * self.trainer.world_size / self._ema_dt
            self.log("img_s", ips, prog_bar=True, on_step=True, on_epoch=False)
        self._t_last = now

    def on_train_epoch_start(self) -> None:
        pos = self._resume_position  # a mid-epoch resume: the sampler skips what was trained
        self._batches_done = pos["batches_done"] if pos and pos["epoch"] == self.current_epoch else 0
        self._resume_position = None
        self._t_last = None
        self._ema_dt = None
        # a method may change its views with the epoch (WCL's weak-then-SimCLR schedule)
        if self.cfg.views is None:
            names = self.method.views_for_epoch(self.current_epoch)
            if names is not None and list(names) != self.view_names:
                self.view_names, self.recipes = view_recipes(self.cfg, self.crop_size, list(names))

    def on_train_epoch_end(self) -> None:
        # before the epoch's checkpoints (Lightning runs the checkpoint callbacks after this hook):
        # a non-finite loss on the epoch's last step must stop the run, not be saved in last.ckpt
        self.guard.check(self.trainer)

    def on_train_end(self) -> None:
        self.guard.check(self.trainer)

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # where in the epoch this checkpoint was written: an interrupted run resumes after these batches
        checkpoint["relssl_position"] = {"epoch": self.current_epoch, "batches_done": self._batches_done}
        checkpoint["relssl_rng"] = rng_state()  # the global generators (engine/rng.py)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pos = checkpoint.get("relssl_position")
        if pos and 0 < pos["batches_done"] < self.steps_per_epoch:
            self._resume_position = dict(pos)
        if checkpoint.get("relssl_rng"):
            restore_rng_state(checkpoint["relssl_rng"])

    def configure_optimizers(self):
        global_batch = self.cfg.optim.batch_size * self.trainer.world_size
        optimizer = build_optimizer(self.method, self.cfg.optim, global_batch)
        warmup = int(round(self.cfg.optim.warmup_epochs * self.steps_per_epoch))
        scheduler = build_scheduler(optimizer, self.total_steps, warmup,
                                    self.cfg.optim.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def seconds_to_text(s: float) -> str:
    m, s = divmod(int(math.ceil(s)), 60)
    return f"{m}m{s:02d}s"
