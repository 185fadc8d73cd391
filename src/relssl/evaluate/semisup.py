"""Semi-supervised evaluation: fine-tune the whole network on 1% / 10% of the labels.

Protocol (SimCLR v2 / WCL style; docs/methods/wcl.md):

* **Label subset** (:func:`label_subset_indices`): a class-balanced subset of the probe-train
  split (= the kNN bank, ``data.bank_subset`` applied): the same number of images from every
  class, ``round(fraction * N / C)`` (at least 1, at most what the class has), drawn with a
  seeded generator: the same seed gives the same indices, and for one seed the 1% subset is
  contained in the 10% one (each class's images are taken in one seeded order). The indices
  are saved with the result. ImageNet's standard 1% / 10% split files are not used (our
  datasets have none).
* **Network**: the pretrained backbone (SplitBatchNorm turned into ordinary BatchNorm, BN in
  train mode while fine-tuning) + ``Linear(D, C)`` initialised N(0, 0.01^2), bias 0; every
  weight is trained.
* **Views**: each batch is a fresh "linear" view (RandomResizedCrop(0.08-1) + flip) made on the
  device (``relssl.augment``), as SimCLR v2 fine-tunes with crop + flip only; test images are
  resized to the eval size and normalised.

**Recipe: our choice, an assumption.** The WCL repository has no fine-tuning code, and SimCLR
v2 fine-tunes ImageNet ResNets from the projector's first layer with LARS for 60 epochs (1%)
or 30 epochs (10%). For small datasets and for every method here (many have no such projector
layer) we fine-tune from the backbone output with SGD, Nesterov momentum 0.9, learning rate
0.01 for the backbone and 0.1 for the new head (the backbone should stay near its pretrained
weights while the randomly initialised head learns fast), weight decay 5e-4 (the small-data
pretraining value), batch 64 (a 1% subset of a CIFAR-sized set has 500 images: batch 256 would
make two steps an epoch), cosine decay per iteration to 0, and SimCLR v2's epoch counts: 60 for
fractions up to 5%, 30 above. All of it is configurable (:class:`SemiSupConfig`).

Reported: the **last-epoch** test top-1 / top-5 (headline); with ``eval_every > 0`` also the
best over the evaluated epochs, which selects the epoch on the test set (optimistic).
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from relssl.errors import ConfigError, DataError
from relssl.schema import build_dataclass
from relssl.metrics.knn import extract_features, topk_accuracy
from relssl.evaluate.linear import linear_head
from relssl.evaluate.plots import confusion_matrix, per_class_accuracy


@dataclass
class SemiSupConfig:
    """Fine-tuning recipe (our choice, see the module docstring)."""

    fraction: float = 0.01  # share of the probe-train split with labels (0.01 = 1%, 0.1 = 10%)
    subset_seed: int = 0  # seed of the label subset
    epochs: int | None = None  # None: 60 for fraction <= 0.05, else 30 (SimCLR v2)
    batch_size: int = 64
    lr_backbone: float = 0.01
    lr_head: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    augment: str = "linear"  # view recipe of the training images ("none": resize only)
    init_std: float = 0.01
    seed: int = 0  # head init, batch order, augmentation draws
    eval_every: int = 0  # test accuracy every N epochs (best-over-epochs); 0: only after the last

    def validate(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1] (0.01 = 1% of the labels), got {self.fraction}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"fine-tuning epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"fine-tuning batch size must be >= 2 (BatchNorm trains), got {self.batch_size}")
        for name in ("lr_backbone", "lr_head"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        from relssl.augment import RECIPES

        if self.augment not in RECIPES:
            raise ConfigError(f"augment must be a view recipe ({', '.join(RECIPES)}); got {self.augment!r}")

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (60 if self.fraction <= 0.05 else 30)

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": self.num_epochs}


def make_semisup_config(**kwargs) -> SemiSupConfig:
    """A validated :class:`SemiSupConfig` (unknown keys raise ``ConfigError``)."""

    return build_dataclass(SemiSupConfig, {k: v for k, v in kwargs.items() if v is not None}, prefix="semisup")


def label_subset_indices(labels: torch.Tensor, fraction: float, num_classes: int | None = None,
                         seed: int = 0) -> tuple[torch.Tensor, int]:
    """Class-balanced, seeded label subset: (sorted indices into ``labels``, images per class).

    Every class gives ``max(1, round(fraction * N / C))`` images (all of a class that has fewer).
    Each class's images are visited in one order drawn from ``seed``, so for one seed a smaller
    fraction is a subset of a larger one.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError("label_subset_indices needs a non-empty 1-D tensor of class labels")
    C = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    per_class = max(1, int(round(fraction * len(labels) / C)))
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(C):
        idx = (labels == c).nonzero().flatten()
        order = torch.randperm(len(idx), generator=g)  # drawn for every class, present or not
        chosen.append(idx[order[:per_class]])
    return torch.cat(chosen).sort().values, per_class


def _batches(n: int, batch_size: int, seed: int, epoch: int):
    """Index batches of one epoch: a seeded permutation, full batches only (BatchNorm trains)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    bs = min(batch_size, n)
    return [order[i:i + bs] for i in range(0, n - bs + 1, bs)]


def fine_tune(setup, cfg: SemiSupConfig | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Fine-tune a checkpoint's backbone + a linear head on a label subset; evaluate on the test split.

    ``setup`` is an :class:`relssl.evaluate.checkpoint.EvalSetup` (``random_init=True``: the same
    network trained from scratch on the subset, the baseline). The setup's method is not changed
    (the backbone is copied). Returns a JSON-ready dict: ``recipe``, ``subset`` (fraction, seed,
    per_class, size, indices into the probe-train split), ``top1`` / ``top5`` (last epoch),
    ``best_top1`` / ``best_epoch`` (when ``eval_every``), ``per_class``, ``confusion``, ``history``.
    """
    from relssl.augment import augment_batch
    from relssl.augment import recipe as make_recipe
    from relssl.evaluate.checkpoint import timed
    from relssl.nn import convert_to_split_bn

    cfg = cfg or SemiSupConfig()
    cfg.validate()
    epochs = cfg.num_epochs
    res = {**setup.header("semisup"), "recipe": cfg.to_dict()}
    with timed(res):
        train, test = setup.train_split(), setup.test_split()
        idx, per_class = label_subset_indices(train.labels, cfg.fraction, setup.num_classes, cfg.subset_seed)
        if len(idx) < 2:
            raise DataError(f"the {cfg.fraction:g} label subset has {len(idx)} image; fine-tuning needs at least 2")
        dev = setup.device
        images = train.images[idx].to(dev)
        labels = train.labels[idx].to(dev).long()
        res["subset"] = {"fraction": cfg.fraction, "seed": cfg.subset_seed, "per_class": per_class,
                         "size": len(idx), "of": len(train), "indices": idx.tolist()}
        res.update(train_size=len(idx), test_size=len(test), num_classes=setup.num_classes)

        backbone = setup.in_layout(convert_to_split_bn(copy.deepcopy(setup.backbone), 1).to(dev))
        feat_dim = int(extract_features(backbone, test.images[:2], setup.eval_size, setup.mean, setup.std,
                                        device=dev, channels_last=setup.channels_last).shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            head = linear_head(feat_dim, setup.num_classes, cfg.init_std).to(dev)
        model = nn.Sequential(backbone, head)
        groups = [{"params": [p for p in backbone.parameters() if p.requires_grad], "lr": cfg.lr_backbone,
                   "base_lr": cfg.lr_backbone},
                  {"params": list(head.parameters()), "lr": cfg.lr_head, "base_lr": cfg.lr_head}]
        for p in backbone.parameters():
            p.requires_grad_(True)
        opt = torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                              weight_decay=cfg.weight_decay)
        view = make_recipe(cfg.augment, crop_size=setup.eval_size)
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
        iters = len(_batches(len(idx), cfg.batch_size, cfg.seed, 0))
        total = epochs * iters
        history, best, preds = [], None, None
        step = 0
        for epoch in range(epochs):
            model.train()
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev)
            seen = 0
            for b in _batches(len(idx), cfg.batch_size, cfg.seed, epoch):
                b = b.to(dev)
                scale = 0.5 * (1.0 + math.cos(math.pi * step / total))
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * scale
                x = augment_batch(images[b], view, setup.mean, setup.std, gen)
                if setup.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with amp:
                    logits = model(x).float()
                loss = F.cross_entropy(logits, labels[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_sum += loss.detach() * len(b)  # no host sync inside the epoch
                correct += (logits.detach().argmax(dim=1) == labels[b]).sum()
                seen += len(b)
            loss_sum, correct = float(loss_sum), int(correct)
            if not math.isfinite(loss_sum):
                raise ConfigError(f"fine-tuning diverged (non-finite loss at epoch {epoch + 1}); lower the learning rates")
            last = epoch == epochs - 1
            if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                feats = extract_features(backbone, test.images, setup.eval_size, setup.mean, setup.std, device=dev,
                                         channels_last=setup.channels_last, normalize=False)
                head.eval()
                with torch.no_grad():
                    logits = head(feats)
                acc = topk_accuracy(logits, test.labels.to(dev))
                rec = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                       "train_top1": 100.0 * correct / max(seen, 1), "lr_head": cfg.lr_head * scale, **acc}
                history.append(rec)
                if best is None or acc["top1"] > best["top1"]:
                    best = {"epoch": epoch + 1, "top1": acc["top1"], "top5": acc["top5"]}
                if last:
                    preds = logits.argmax(dim=1)
                if log is not None:
                    log(f"epoch {epoch + 1}/{epochs}: loss {rec['train_loss']:.4f}, test top-1 {acc['top1']:.2f}%")
        cm = confusion_matrix(test.labels, preds, setup.num_classes)
        names = setup.class_names
        res.update(top1=history[-1]["top1"], top5=history[-1]["top5"], steps=step,
                   per_class={names[i]: v for i, v in enumerate(per_class_accuracy(cm))},
                   confusion=cm.tolist(), class_names=names, history=history)
        if cfg.eval_every:
            res.update(best_top1=best["top1"], best_top5=best["top5"], best_epoch=best["epoch"])
    res["_model"] = model
    return res
