"""Optimizers and learning-rate schedules for pretraining.

* SGD (momentum, optional Nesterov), AdamW (torch's, ``betas``; the ViT recipes) and LARS
  (layer-wise adaptive rate scaling, You et al. 2017, in the form WCL's official code uses: weight
  decay added to the gradient before the trust ratio, norm weights and biases excluded from both
  when ``exclude_bn_bias`` is on).
* Linear warm-up from 0 over ``warmup_epochs`` then cosine to ``min_lr``, updated every step:
  lr(T) = base * T / W for T < W, else min + 0.5 * (base - min) * (1 + cos(pi * (T - W) / (S - W))).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from relssl.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose update of each parameter is scaled by eta * ||w|| / ||g + wd * w||.

    Parameter groups with ``lars_exclude=True`` get plain SGD (no weight decay from this group's
    settings is skipped: set their ``weight_decay`` to 0 to exclude them from decay too).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, eps: float = 0.0, nesterov: bool = False) -> None:
        if lr <= 0 or eta <= 0:
            raise ValueError(f"LARS needs lr > 0 and eta > 0, got lr={lr}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      eps=eps, nesterov=nesterov, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm, g_norm = p.norm(), g.norm()
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / (g_norm + group["eps"]), torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                update = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(update, alpha=-group["lr"])
        return loss


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names that sub-modules exclude from weight decay through ``no_weight_decay()``
    (timm's convention: a ViT's ``pos_embed`` and ``cls_token``), prefixed with the sub-module's path."""
    names = set()
    for path, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{path}.{n}" if path else n for n in fn()}
    return names


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    """Trainable parameters in two groups: decayed, and (if asked) norm weights, biases and the
    model's ``no_weight_decay()`` parameters without decay."""
    decay, no_decay = [], []
    skip = no_decay_names(model) if exclude_bn_bias else set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if exclude_bn_bias and (p.ndim <= 1 or name in skip) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / 256
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(global_batch)
    return cfg.lr


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    lr = scaled_lr(cfg, global_batch)
    groups = param_groups(model, cfg.weight_decay, cfg.exclude_bn_bias)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta, nesterov=cfg.nesterov)
    for g in groups:
        g.pop("lars_exclude", None)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (0-based) of a linear warm-up + cosine schedule."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    base = optimizer.param_groups[0]["lr"]

    def factor(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps, base, min_lr) / base

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
