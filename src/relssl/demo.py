"""``relssl demo``: the main job on a fresh machine.

Pretrains the default method on Fashion-MNIST, evaluates it with kNN (k=200, T=0.1), and prints
the result beside two baselines that need no training: the same kNN on the randomly initialised
backbone, and on raw (mean-centred) pixels. On Fashion-MNIST those baselines are already around
80%, so the gain over them is what shows the method learned something.

Hardware decides the budget: with a GPU, the packaged ResNet-18 recipe as it is; on a CPU-only
machine, a small conv net on a class-balanced subset so the whole job takes about five minutes
on 2 cores.
"""

from __future__ import annotations

import torch

from relssl.cli import resolve_recipe
from relssl.config import load_config
from relssl.engine import pretrain
from relssl.engine.run import load_data
from relssl.evaluate.knn import knn_accuracy, pixel_features

# CPU budget: 4-layer conv net (32-256 wide), measured about 5 minutes on 2 cores (see README)
CPU_OVERRIDES = [
    "backbone.name=convnet", "backbone.bn_splits=1",
    "data.subset=20000", "data.bank_subset=10000", "data.test_subset=5000",
    "optim.batch_size=256", "optim.epochs=6", "optim.warmup_epochs=1", "optim.lr=0.06",
    "trainer.knn_every=3", "method.queue_size=4096",
]


def run_demo(method: str = "mocov2", device: str = "auto", overrides: list[str] | None = None) -> int:
    gpu = torch.cuda.is_available() if device == "auto" else device == "gpu"
    base = [] if gpu else list(CPU_OVERRIDES)
    if method != "mocov2":
        base = [o for o in base if not o.startswith("method.queue_size")]
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"),
                      base + [f"trainer.accelerator={'gpu' if gpu else 'cpu'}"] + list(overrides or []))
    splits = load_data(cfg)
    print(f"relssl demo: {method} on Fashion-MNIST, backbone {cfg.backbone.name}, "
          f"{cfg.data.subset or len(splits.pretrain)} images x {cfg.optim.epochs} epochs on {'GPU' if gpu else 'CPU'}",
          flush=True)
    res = pretrain(cfg, splits=splits)
    bank = splits.bank.subset(cfg.data.bank_subset, seed=cfg.seed)
    test = splits.test.subset(cfg.data.test_subset, seed=cfg.seed)
    pix = knn_accuracy(pixel_features(bank.images), bank.labels, pixel_features(test.images), test.labels,
                       splits.info.num_classes)["top1"]
    print()
    print(f"kNN top-1 on Fashion-MNIST test ({len(test)} images, bank {len(bank)}; k=200, T=0.1):")
    print(f"  raw pixels (mean-centred)        {pix:6.2f}%")
    if res["knn_init_top1"] is not None:
        print(f"  random-init {cfg.backbone.name:<20} {res['knn_init_top1']:6.2f}%")
    print(f"  {method} after {res['epochs_done']} epochs {'':<9} {res['knn_last_top1']:6.2f}%   (last epoch)")
    print(f"run directory: {res['run_dir']}  ({res['wall_seconds']:.0f} s of training)")
    return 0
