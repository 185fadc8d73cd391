"""Linear probe: a linear classifier trained on the frozen backbone's features.

Protocol (docs/methods/small-data-recipe.md, "Linear probe"; the evaluation sections of the
MSVQ, ASCL, MoCo v2 and WCL pages of docs/methods/):

* the backbone is frozen and stays in eval mode (BatchNorm uses its running statistics), also
  while the classifier trains; features = the pooled backbone output (512-d for ResNet-18),
  not normalised (``feature_norm="l2"`` or ``"l2_standardize"``, MSF's fixed "FullBatchNorm",
  are options);
* ``Linear(D, C)`` initialised N(0, 0.01^2), bias 0; cross-entropy; SGD, momentum 0.9,
  Nesterov, weight decay 0, batch 256, 100 epochs;
* two schedules: ``cosine`` (per-iteration cosine annealing to 0, lr 1.0: MSVQ's
  ``linear_eval.py`` default) and ``step`` (lr 10: ASCL's default, x0.1 at epochs 60 and 80;
  the pc-cp benchmark and MoCo's ``main_lincls.py`` use lr 30: ``lr=30``);
* training images: without augmentation (default) the features of the probe-train split are
  computed ONCE and the classifier trains on them (minutes on a CPU); with ``augment=True``
  every batch is a fresh "linear" view (RandomResizedCrop(0.08-1) + flip, the official
  linear-probe transform) made on the device and passed through the frozen backbone;
* test images: resize to the eval size + normalise (no crop), features computed once.

Reported (honestly, docs/evaluation.md "Honest reporting"): the **last-epoch** test accuracy is
the headline (``top1`` / ``top5``); the best test accuracy over epochs (``best_top1``), which
is what the MSVQ, ASCL and WCL repos report, is given beside it and is optimistic: it selects
the epoch on the test set. Also per-class accuracy and the confusion matrix of the last epoch.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from relssl.errors import ConfigError
from relssl.schema import build_dataclass
from relssl.metrics.knn import topk_accuracy
from relssl.evaluate.plots import confusion_matrix, per_class_accuracy

SCHEDULES = ("cosine", "step")
FEATURE_NORMS = ("none", "l2", "l2_standardize")
DEFAULT_LR = {"cosine": 1.0, "step": 10.0}


@dataclass
class LinearProbeConfig:
    """Linear-probe recipe; the defaults are MSVQ's cosine variant (docs/methods/small-data-recipe.md)."""

    schedule: str = "cosine"  # cosine (MSVQ) | step (ASCL / pc-cp / MoCo)
    lr: float | None = None  # None: 1.0 for cosine, 10.0 for step
    epochs: int = 100
    batch_size: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (60, 80)  # step schedule: lr x gamma at these epochs
    gamma: float = 0.1
    augment: bool = False  # True: a fresh "linear" view (RRC 0.08-1 + flip) of every training image each epoch
    feature_norm: str = "none"  # none | l2 | l2_standardize (MSF)
    init_std: float = 0.01
    seed: int = 0
    eval_every: int = 1  # test accuracy every N epochs (for best-over-epochs); always after the last

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"linear probe schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ConfigError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}; got {self.feature_norm!r}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"linear probe lr must be > 0, got {self.lr}")
        if self.epochs < 1:
            raise ConfigError(f"linear probe epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"linear probe batch size must be >= 1, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.schedule]

    def lr_at(self, epoch: int, it: int, iters_per_epoch: int) -> float:
        """Learning rate of iteration ``it`` of (0-based) ``epoch``."""
        if self.schedule == "cosine":
            t = epoch * iters_per_epoch + it
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * t / (self.epochs * iters_per_epoch)))
        return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr"] = self.base_lr
        d["milestones"] = list(self.milestones)
        return d


def make_probe_config(**kwargs) -> LinearProbeConfig:
    """A validated :class:`LinearProbeConfig` (unknown keys raise ``ConfigError``)."""

    return build_dataclass(LinearProbeConfig, {k: v for k, v in kwargs.items() if v is not None}, prefix="linear")


# ----------------------------------------------------------------------------- feature helpers


@dataclass
class FeatureTransform:
    """Fixed feature normalisation: none, L2, or L2 then standardise with the train set's statistics."""

    kind: str = "none"
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @classmethod
    def fit(cls, kind: str, train_feats: torch.Tensor) -> "FeatureTransform":
        if kind == "l2_standardize":
            x = F.normalize(train_feats, dim=1)
            return cls(kind, x.mean(dim=0), x.std(dim=0).clamp_min(1e-6))
        return cls(kind)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        x = F.normalize(x, dim=1)
        if self.kind == "l2_standardize":
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x


def linear_head(in_dim: int, num_classes: int, init_std: float = 0.01) -> nn.Linear:
    """``Linear(in_dim, num_classes)``, weight N(0, init_std^2), bias 0 (the official probes' init)."""
    fc = nn.Linear(in_dim, num_classes)
    nn.init.normal_(fc.weight, 0.0, init_std)
    nn.init.zeros_(fc.bias)
    return fc


@contextmanager
def small_ops_threads(device: torch.device):
    """On the CPU, run a loop of tiny ops (a linear layer on cached features) on one thread:
    intra-op threads only add synchronisation at this size, and on a busy machine they spin."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _logits(fc: nn.Module, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([fc(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def _evaluate(fc: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, torch.Tensor]:
    fc.eval()
    logits = _logits(fc, x)
    fc.train()
    return topk_accuracy(logits, y), logits.argmax(dim=1)


def train_linear(num_classes: int, feat_dim: int, train_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
                 iters_per_epoch: int, test_x: torch.Tensor, test_y: torch.Tensor, cfg: LinearProbeConfig,
                 device: torch.device, log: Callable[[str], None] | None = None) -> dict:
    """The probe's training loop; ``train_batches(epoch)`` yields (features, labels) on ``device``.

    Returns ``history`` (per evaluated epoch: train loss, train top-1, lr, test top-1 / top-5),
    ``last`` and ``best`` (test top-1 over evaluated epochs), the last epoch's predictions and the
    trained head's state dict.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        fc = linear_head(feat_dim, num_classes, cfg.init_std)
    fc.to(device).train()
    opt = torch.optim.SGD(fc.parameters(), lr=cfg.base_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    history, best, preds = [], None, None
    for epoch in range(cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        lr = cfg.lr_at(epoch, 0, iters_per_epoch)
        for it, (x, y) in enumerate(train_batches(epoch)):
            lr = cfg.lr_at(epoch, it, iters_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = fc(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(dim=1) == y).sum()
            seen += len(y)
        last_epoch = epoch == cfg.epochs - 1
        if last_epoch or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            acc, p = _evaluate(fc, test_x, test_y)
            rec = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(seen, 1),
                   "train_top1": 100.0 * float(correct) / max(seen, 1), "lr": lr, **acc}
            if not math.isfinite(rec["train_loss"]):
                raise ConfigError(f"the linear probe diverged (non-finite loss at epoch {epoch + 1}); lower --lr")
            history.append(rec)
            if best is None or acc["top1"] > best["top1"]:
                best = {"epoch": epoch + 1, "top1": acc["top1"], "top5": acc["top5"]}
            if last_epoch:
                preds = p
            if log is not None:
                log(f"epoch {epoch + 1}/{cfg.epochs}: loss {rec['train_loss']:.4f}, lr {lr:.4g}, "
                    f"test top-1 {acc['top1']:.2f}%")
    return {"history": history, "last": history[-1], "best": best, "preds": preds,
            "head": {k: v.detach().cpu() for k, v in fc.state_dict().items()}}


def _cached_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """Shuffled mini-batches of cached features, a fresh seeded order each epoch (last batch kept)."""
    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]

    return batches


def linear_probe_features(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          num_classes: int, cfg: LinearProbeConfig | None = None, device: torch.device | str | None = None,
                          log: Callable[[str], None] | None = None) -> dict:
    """Linear probe on precomputed features (N, D); returns the :func:`train_linear` dict plus
    ``top1`` / ``top5`` (last epoch), ``best_top1`` and ``confusion`` / ``per_class``."""
    cfg = cfg or LinearProbeConfig()
    cfg.validate()
    device = torch.device(device) if device is not None else train_x.device
    tf = FeatureTransform.fit(cfg.feature_norm, train_x.to(device))
    xtr, xte = tf(train_x.to(device)), tf(test_x.to(device))
    ytr, yte = train_y.to(device).long(), test_y.to(device).long()
    iters = math.ceil(len(xtr) / cfg.batch_size)
    with small_ops_threads(device):
        out = train_linear(num_classes, xtr.shape[1], _cached_batches(xtr, ytr, cfg.batch_size, cfg.seed), iters,
                           xte, yte, cfg, device, log)
    return _summarise(out, yte, num_classes)


def _summarise(out: dict, test_y: torch.Tensor, num_classes: int) -> dict:
    cm = confusion_matrix(test_y, out["preds"], num_classes)
    out["confusion"] = cm.tolist()
    out["per_class"] = per_class_accuracy(cm)
    out["top1"], out["top5"] = out["last"]["top1"], out["last"]["top5"]
    out["best_top1"], out["best_top5"], out["best_epoch"] = out["best"]["top1"], out["best"]["top5"], out["best"]["epoch"]
    return out


def linear_probe(setup, cfg: LinearProbeConfig | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Linear probe of a checkpoint's backbone (an :class:`relssl.evaluate.checkpoint.EvalSetup`).

    Train = the probe-train split (``data.bank_subset`` applied), test = the test split
    (``data.test_subset`` applied). Returns the result dict (JSON-ready: ``recipe``, ``top1`` /
    ``top5`` of the last epoch, ``best_top1`` / ``best_top5`` / ``best_epoch`` (selected on the test set:
    optimistic), ``per_class`` (class name -> %), ``confusion``, ``history``); the trained head
    and the predictions stay out of it (``_head``, ``_preds``).
    """
    from relssl.augment import augment_batch
    from relssl.augment import recipe as make_recipe
    from relssl.evaluate.checkpoint import timed

    cfg = cfg or LinearProbeConfig()
    cfg.validate()
    res = {**setup.header("linear"), "recipe": cfg.to_dict()}
    with timed(res):
        train, test = setup.train_split(), setup.test_split()
        dev = setup.device
        test_x = setup.features(test.images, normalize=False)
        test_y = test.labels.to(dev).long()
        train_y = train.labels.to(dev).long()
        res.update(train_size=len(train), test_size=len(test), num_classes=setup.num_classes,
                   feature_dim=int(test_x.shape[1]))
        if not cfg.augment:
            train_x = setup.features(train.images, normalize=False)
            out = linear_probe_features(train_x, train_y, test_x, test_y, setup.num_classes, cfg, dev, log)
        else:
            # features of un-augmented images only to fit the fixed l2_standardize statistics
            fit_x = setup.features(train.images, normalize=False) if cfg.feature_norm == "l2_standardize" else test_x[:1]
            tf = FeatureTransform.fit(cfg.feature_norm, fit_x)
            images = train.images.to(dev)
            view = make_recipe("linear", crop_size=setup.eval_size)
            backbone = setup.backbone
            backbone.eval()
            autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext())

            def batches(epoch: int):
                gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + epoch)
                order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed + epoch)).to(dev)
                for i in range(0, len(images), cfg.batch_size):
                    idx = order[i:i + cfg.batch_size]
                    x = augment_batch(images[idx], view, setup.mean, setup.std, gen)
                    if setup.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.no_grad(), autocast:
                        f = backbone(x).float().flatten(1)
                    yield tf(f), train_y[idx]

            iters = math.ceil(len(images) / cfg.batch_size)
            out = train_linear(setup.num_classes, test_x.shape[1], batches, iters, tf(test_x), test_y, cfg, dev, log)
            out = _summarise(out, test_y, setup.num_classes)
        names = setup.class_names
        res.update(top1=out["top1"], top5=out["top5"], best_top1=out["best_top1"], best_top5=out["best_top5"],
                   best_epoch=out["best_epoch"],
                   per_class={names[i]: v for i, v in enumerate(out["per_class"])},
                   confusion=out["confusion"], class_names=names, history=out["history"])
    res["_head"], res["_preds"] = out["head"], out["preds"]
    return res
