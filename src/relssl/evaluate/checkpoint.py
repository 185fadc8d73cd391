"""Load a pretraining checkpoint's backbone and evaluate it."""

from __future__ import annotations

from pathlib import Path

import torch

from relssl.config import apply_overrides, config_from_dict
from relssl.data import load_dataset
from relssl.engine.checkpoint import load_checkpoint_file
from relssl.errors import CheckpointError, ConfigError
from relssl.evaluate.knn import extract_features, knn_accuracy


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in ("last.ckpt", "best.ckpt"):
            cand = path / "checkpoints" / name
            if cand.is_file():
                return cand
        raise CheckpointError(f"{path} holds no checkpoints/last.ckpt; pass a run directory of relssl pretrain or a .ckpt file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_method(path: str | Path, overrides: list[str] | None = None):
    """(config, method with the checkpoint's weights, dataset info) from a checkpoint or run directory."""
    from relssl.engine.module import build_backbone_from_config
    from relssl.methods import build_method

    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint_file(ckpt_path)
    raw = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {ckpt_path} carries no relssl config: not made by relssl pretrain")
    for text in overrides or []:
        if not text.startswith("data."):
            raise ConfigError(f"override {text!r}: only data.* keys can be changed when evaluating a checkpoint")
    raw = apply_overrides(raw, overrides or [])
    cfg = config_from_dict(raw)
    splits = load_dataset(cfg.data.dataset, cfg.data.root, download=cfg.data.download)
    backbone, feat_dim = build_backbone_from_config(cfg, splits.info.channels, splits.info.maxpool)
    method = build_method(cfg.method, backbone, feat_dim)
    state = {k[len("method."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("method.")}
    missing, unexpected = method.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not match its config's method {cfg.method['name']}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights (e.g. {(missing or unexpected)[0]})"
        )
    return cfg, method, splits, ckpt_path


def evaluate_knn_checkpoint(path: str | Path, overrides: list[str] | None = None, k: int = 200, t: float = 0.1,
                            weighting: str = "exp", device: str | None = None) -> dict:
    cfg, method, splits, ckpt_path = load_method(path, overrides)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    method.to(dev)
    size = cfg.data.eval_size or cfg.data.crop_size or splits.info.crop_size
    bank = splits.bank.subset(cfg.data.bank_subset, seed=cfg.seed)
    test = splits.test.subset(cfg.data.test_subset, seed=cfg.seed)
    kw = dict(size=size, mean=splits.info.mean, std=splits.info.std, device=dev)
    fb = extract_features(method.backbone, bank.images, **kw)
    ft = extract_features(method.backbone, test.images, **kw)
    acc = knn_accuracy(fb, bank.labels.to(dev), ft, test.labels.to(dev), splits.info.num_classes, k=k, t=t,
                       weighting=weighting)
    return {"checkpoint": str(ckpt_path), "method": cfg.method["name"], "k": k, "t": t, "weighting": weighting,
            "bank": len(bank), "test": len(test), **acc}
