"""The one LightningModule that trains any method.

It owns the device-resident training images, draws the views of each batch on the device (one
batched call per view, random per sample, seeded by (seed, step, rank) so a resumed run draws
exactly the same views), hands them to the method, logs, and calls the method's
``after_optimizer_step`` (EMA teachers) after every optimizer step. It knows nothing of any one
method.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np

import lightning as L
import torch
from torch.utils.data import DataLoader

from relssl.augment import make_views
from relssl.augment import recipe as make_recipe
from relssl.config import Config
from relssl.data import DatasetSplits, EpochBatchSampler, IndexBatchDataset
from relssl.data.filebacked import DecodedBatchDataset
from relssl.engine.optim import build_optimizer, build_scheduler
from relssl.errors import ConfigError, TrainingError
from relssl.methods import METHODS, StepInfo, build_method
from relssl.methods.plugins import build_plugins
from relssl.nn import build_backbone


def build_backbone_from_config(cfg: Config, channels: int, maxpool_default: bool):
    b = cfg.backbone
    maxpool = maxpool_default if b.maxpool is None else b.maxpool
    backbone, feat_dim = build_backbone(b.name, in_channels=channels, cifar_stem=b.cifar_stem,
                                        maxpool=maxpool, bn_splits=b.bn_splits)
    if b.pretrained:
        from relssl.nn import load_torchvision_weights

        load_torchvision_weights(backbone, b.pretrained)
    return backbone, feat_dim


def view_recipes(cfg: Config, crop_size: int, names: list[str] | None = None):
    """The recipes of the views: ``cfg.views`` if set, else ``names`` (a method's choice for the
    current epoch), else the method's ``default_views``.

    A method may take views beyond its ``default_views`` that depend on its config (WCL's
    low-resolution multi-crops): its classmethod ``extra_views(method_section, crop_size,
    main_names)`` returns one ``(preset, overrides)`` pair per extra view, appended after the main
    views; those overrides (e.g. ``crop_size``, ``crop_scale``) win over ``augment.<preset>``. The
    names may then list the main views only (the extras get the method's presets) or the main
    views followed by one preset per extra view. Views may differ in size (``make_views`` groups
    them by size)."""
    cls = METHODS[cfg.method["name"]]
    if cfg.views is not None:
        names = list(cfg.views)
    elif names is None:
        names = list(cls.default_views)
    n_main = len(cls.default_views)
    extra_views = getattr(cls, "extra_views", None)
    extras = [] if extra_views is None or len(names) < n_main else list(
        extra_views(cfg.method, crop_size, list(names[:n_main])))
    if len(names) == n_main:
        names = names + [preset for preset, _ in extras]
    elif not extras or len(names) != n_main + len(extras):
        also = f", or {n_main} + {len(extras)} with one preset per extra view" if extras else ""
        raise ConfigError(
            f"views must name {n_main} recipes for {cls.name} "
            f"(default {list(cls.default_views)}){also}, got {names}"
        )
    per_view = [{}] * n_main + [dict(overrides) for _, overrides in extras]
    recipes = []
    for name, extra in zip(names, per_view):
        # the method's own recipe defaults (e.g. MSVQ's weak flip 0.9) under the user's overrides,
        # then what the method fixes for its extra views
        overrides = {"crop_size": crop_size, **getattr(cls, "default_augment", {}).get(name, {}),
                     **cfg.augment.get(name, {}), **extra}
        try:
            recipes.append(make_recipe(name, **overrides))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"views: {err}") from err
    return names, recipes


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


class PretrainModule(L.LightningModule):
    def __init__(self, cfg: Config, splits: DatasetSplits) -> None:
        super().__init__()
        self.cfg = cfg
        self.save_hyperparameters({"config": cfg.to_dict()})
        info = splits.info
        self.info = info
        self.crop_size = cfg.data.crop_size or info.crop_size
        from relssl.engine.run import eval_image_size

        self.eval_size = eval_image_size(cfg, info)
        self.mean, self.std = info.mean, info.std
        backbone, feat_dim = build_backbone_from_config(cfg, info.channels, info.maxpool)
        self.method = build_method(cfg.method, backbone, feat_dim)
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
        self._pending_loss: torch.Tensor | None = None
        if any(getattr(p, "uses_labels", False) for p in self.plugins) and self.train_labels is None:
            raise ConfigError(f"plugin mask_false_negatives trains on class labels, but the pretraining split of "
                              f"{cfg.data.dataset} has none; remove the plug-in or use a labelled dataset")
        self._pending_step = 0
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
        """channels_last on CUDA only (``backbone.channels_last``): there cuDNN's NHWC kernels are the
        fast ones with bf16; on a CPU it would only add layout conversions."""
        attached = self._trainer is not None
        device = self.trainer.strategy.root_device if attached else self.device
        return self.cfg.backbone.channels_last and device.type == "cuda"

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
        """Log the false-negative diagnostics of this step as ``diag/<key>`` (issue #13).

        The method's own (``out["_diag"]``, see ``relssl.methods.diagnose``) and the health of
        every queue. Written straight to the loggers at this step (Lightning's ``self.log``
        would drop steps off its ``log_every_n_steps`` grid); one host sync per diagnostic step.
        The cost is measured by ``benchmarks/diagnostics_overhead.py``.
        """
        from relssl.methods.diagnose import queue_health
        from relssl.nn import FeatureQueue

        values = dict(out.get("_diag") or {})
        for name, module in self.method.named_modules():
            if isinstance(module, FeatureQueue):
                values.update(queue_health(name.replace(".", "_"), module, info))
        if not values:
            return
        keys = list(values)
        flat = torch.stack([values[k].detach().float().reshape(()).to(self.device) for k in keys]).cpu().tolist()
        metrics = {f"diag/{k}": v for k, v in zip(keys, flat)}
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=info.step)

    def training_step(self, batch, batch_idx: int):
        self._check_pending_loss()
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
            finite = bool(torch.isfinite(loss).item())
            if self.trainer.world_size > 1:  # all ranks skip together: one skipping alone hangs DDP
                finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
            if not finite:
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
        else:
            # checked one step later, so the check never stalls the device pipeline
            self._pending_loss, self._pending_step = self._copy_to_host(loss), self.global_step
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

    def _copy_to_host(self, loss: torch.Tensor) -> torch.Tensor:
        """Start copying the loss to the host without waiting (CUDA); the CPU tensor is read next step.

        ``.item()`` on a CUDA tensor would wait for everything queued so far, the backward pass and
        optimizer step included, and leave the GPU idle while the next step's views are launched.
        Waiting on an event recorded right after the copy blocks only until the loss itself exists.
        """
        if loss.device.type != "cuda":
            return loss.detach()
        if getattr(self, "_loss_host", None) is None:
            self._loss_host = torch.empty((), dtype=torch.float32, pin_memory=True)
            self._loss_event = torch.cuda.Event()
        self._loss_host.copy_(loss.detach().float(), non_blocking=True)
        self._loss_event.record()
        return self._loss_host

    def _check_pending_loss(self) -> None:
        if self._pending_loss is not None and self._pending_loss is getattr(self, "_loss_host", None):
            self._loss_event.synchronize()  # the loss is computed; later work stays queued
        finite = self._pending_loss is None or bool(torch.isfinite(self._pending_loss).item())
        if self._pending_loss is not None and self.trainer.world_size > 1:
            # every rank stops together: one stopping alone would leave the others waiting in a collective
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            step, self._pending_loss = self._pending_step, None
            cb = self.trainer.checkpoint_callback  # last.ckpt's: no monitor, so its file is its "best" path
            ckpt = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "") or "none yet"
            raise TrainingError(
                f"non-finite loss at step {step} ({self.cfg.method['name']}); last good checkpoint: {ckpt}; "
                "lower optim.lr, check the data, or set trainer.nan_policy=skip"
            )
        self._pending_loss = None

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
        choose = getattr(self.method, "views_for_epoch", None)
        if choose is not None and self.cfg.views is None:
            names = choose(self.current_epoch)
            if names is not None and list(names) != self.view_names:
                self.view_names, self.recipes = view_recipes(self.cfg, self.crop_size, list(names))

    def on_train_epoch_end(self) -> None:
        # before the epoch's checkpoints (Lightning runs the checkpoint callbacks after this hook):
        # a non-finite loss on the epoch's last step must stop the run, not be saved in last.ckpt
        self._check_pending_loss()

    def on_train_end(self) -> None:
        self._check_pending_loss()

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the global RNG states (torch, CUDA, NumPy, Python) as plain tensors / ints.

        relssl's own randomness is seeded per step and needs none of them, but user code, custom
        methods and libraries may draw from the global generators; restoring them keeps a resumed
        run on the same path. Stored without NumPy objects so the file loads with weights_only.
        """
        # where in the epoch this checkpoint was written: an interrupted run resumes after these batches
        checkpoint["relssl_position"] = {"epoch": self.current_epoch, "batches_done": self._batches_done}
        np_state = np.random.get_state()
        checkpoint["relssl_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": list(random.getstate()[1]) + [random.getstate()[0]],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pos = checkpoint.get("relssl_position")
        if pos and 0 < pos["batches_done"] < self.steps_per_epoch:
            self._resume_position = dict(pos)
        rng = checkpoint.get("relssl_rng")
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        *state, version = rng["python"]
        random.setstate((version, tuple(state), None))

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
