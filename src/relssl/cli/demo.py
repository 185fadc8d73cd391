"""``relssl demo``: the main job on a fresh machine.

Pretrains the default method on Fashion-MNIST, evaluates it with kNN (k=200, T=0.1), and prints
the result beside two baselines that need no training: the same kNN on the randomly initialised
backbone, and on raw (mean-centred) pixels. On Fashion-MNIST those baselines are already around
80%, so the gain over them is what shows the method learned something.

Hardware decides the budget: with a GPU, the packaged ResNet-18 recipe as it is; on a CPU-only
machine, a small conv net for 5 epochs of all 60,000 images: about 3.5 minutes of training on the
slower of this project's 2-core machines (README, "Quick start").
"""

from __future__ import annotations

import torch

from relssl.config import list_recipes, load_config, load_data, resolve_recipe
from relssl.errors import ConfigError
from relssl.metrics.knn import knn_accuracy, pixel_features_pair

# CPU budget, from the measurements of benchmarks/cpu_budget.py (docs/comparison.md): the 4-layer
# conv net with a 2x2 feature grid at half width (convnet_grid_small, 16-128: a quarter of
# convnet_grid's multiply-adds, and as good after 3 epochs) at the native 28 px, all 60,000 images
# for 5 epochs at the comparison's lr 0.3: 210 s of training on the slower of this project's 2-core
# machines, in channels_last (README, "Quick start")
CPU_OVERRIDES = [
    "backbone.name=convnet_grid_small", "backbone.bn_splits=1", "data.crop_size=28",
    "data.bank_subset=10000", "data.test_subset=5000",
    "optim.batch_size=256", "optim.epochs=5", "optim.warmup_epochs=0.5", "optim.lr=0.3",
    "trainer.knn_every=5", "trainer.monitor_subset=0", "trainer.threads=2",
]
# per method on the CPU: SimCLR with the MoCo v2 crop range (0.2-1: the 0.08 of SimCLR's own
# recipe cuts too much of a 28-px garment for so short a run). trainer.threads=2: the same numbers
# on every machine with the same CPU kernels (a different thread count changes float rounding and
# so the weights; the same machine and threads repeat a run bit for bit)
CPU_METHOD_OVERRIDES = {"simclr": ["views=[strong,strong]"]}
DEFAULT_METHOD = "simclr"


def run_demo(method: str = DEFAULT_METHOD, device: str = "auto", overrides: list[str] | None = None) -> int:
    known = [r.split("/", 1)[1] for r in list_recipes() if r.startswith("fashion_mnist/")]
    if method not in known:
        raise ConfigError(f"demo --method {method}: no such Fashion-MNIST recipe; choose one of {', '.join(known)}")
    gpu = torch.cuda.is_available() if device == "auto" else device == "gpu"
    base = [] if gpu else CPU_OVERRIDES + CPU_METHOD_OVERRIDES.get(method, [])
    args = base + [f"trainer.accelerator={'gpu' if gpu else 'cpu'}"] + list(overrides or [])
    print("relssl demo = relssl pretrain fashion_mnist/" + method + " " + " ".join(args), flush=True)
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"), args)
    from relssl.engine import pretrain  # once the config holds: the engine (Lightning) takes seconds to import

    splits = load_data(cfg)
    print(f"relssl demo: {method} on Fashion-MNIST, backbone {cfg.backbone.name}, "
          f"{cfg.data.subset or len(splits.pretrain)} images x {cfg.optim.epochs} epochs on {'GPU' if gpu else 'CPU'}",
          flush=True)
    res = pretrain(cfg, splits=splits)
    bank = splits.bank.subset(cfg.data.bank_subset, seed=cfg.seed)
    test = splits.test.subset(cfg.data.test_subset, seed=cfg.seed)
    fb, ft = pixel_features_pair(bank.images, test.images)
    pix = knn_accuracy(fb, bank.labels, ft, test.labels, splits.info.num_classes)["top1"]
    print()
    print(f"kNN top-1 on Fashion-MNIST test ({len(test)} images, bank {len(bank)}; k=200, T=0.1):")
    print(f"  raw pixels (mean-centred)        {pix:6.2f}%")
    if res["knn_init_top1"] is not None:
        print(f"  random-init {cfg.backbone.name:<20} {res['knn_init_top1']:6.2f}%")
    trained = res["knn_last_top1"]
    print(f"  {method} after {res['epochs_done']} epochs {'':<9} {trained:6.2f}%   (last epoch)")
    print(f"  {method} - raw pixels {'':<14} {trained - pix:+6.2f} points"
          + ("" if trained > pix else ": no better than the input yet; train longer (optim.epochs=...)"))
    print(f"run directory: {res['run_dir']}  ({res['wall_seconds']:.0f} s of training)")
    return 0
