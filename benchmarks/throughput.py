"""Pretraining throughput per method, against the compute ceiling measured in the same run.

    python benchmarks/throughput.py                       # every method, ResNet-18, batch 512 (GPU)
    python benchmarks/throughput.py --backbone convnet --batch 256 --steps 20   # a CPU smoke run
    python benchmarks/throughput.py --save                # also write benchmarks/results/*.json
    python benchmarks/throughput.py --backbone timm:vit_tiny_patch16_224 --methods simclr   # any backbone name;
        # a timm ViT is sized for --size (patch 4 at 32 px); --backbone-kwargs '{depth: 6}' sets its constructor's

Ceiling: the same backbone and batch on random device-resident float data with no augmentation
and no loss: two student forward+backward passes and two teacher forward passes per image plus
an SGD step (what a MoCo-style step must compute at least). Method rate: the real engine
(Lightning, PretrainModule) on device-resident uint8 images with the method's batched views,
its loss, EMA and queue updates. Both use bf16 autocast and channels_last on a GPU, float32 on
the CPU. Images/s counts each source image once (not each view).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relssl.config import config_from_dict  # noqa: E402
from relssl.data import DatasetSplits, ImageDataset  # noqa: E402
from relssl.data.datasets import DatasetInfo  # noqa: E402
from relssl.engine.module import PretrainModule  # noqa: E402
from relssl.engine.rundir import environment  # noqa: E402
from relssl.methods import METHODS  # noqa: E402
from relssl.nn import build_backbone, make_teacher  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling(backbone_name: str, batch: int, size: int, device: torch.device, steps: int, warmup: int,
            kwargs: dict | None = None) -> float:
    student, _ = build_backbone(backbone_name, in_channels=3, cifar_stem=True, kwargs=kwargs, image_size=size)
    student.to(device)
    teacher = make_teacher(student).to(device)
    cl = device.type == "cuda"
    if cl:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2 * batch, 3, size, size, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            out = student(x)
            with torch.no_grad():
                teacher(x)
            out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


class Timer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.warmup:
            sync(pl_module.device)
            self.t0 = time.perf_counter()
            self.start_step = step
        elif self.t0 is not None:
            sync(pl_module.device) if step == trainer.max_steps else None
            self.t1, self.n = time.perf_counter(), step - self.start_step


def method_rate(method: str, backbone_name: str, batch: int, size: int, device: torch.device, steps: int,
                warmup: int, data: DatasetSplits, kwargs: dict | None = None) -> tuple[float, float]:
    raw = {"method": {"name": method}, "backbone": {"name": backbone_name, "bn_splits": 1, "kwargs": kwargs or {}},
           "data": {"crop_size": size},
           "optim": {"batch_size": batch, "epochs": 10, "warmup_epochs": 0, "max_steps": warmup + steps},
           "trainer": {"knn_every": 0, "knn_at_start": False, "progress_bar": False}}
    if method == "mocov2":
        # symmetric: two student forward+backward and two teacher forward passes per image, the
        # same work as the ceiling (the asymmetric default does half of it)
        raw["method"].update(queue_size=4096, symmetric=True)
    cfg = config_from_dict(raw)
    L.seed_everything(0, verbose=False)
    module = PretrainModule(cfg, data)
    timer = Timer(warmup)
    accel = "gpu" if device.type == "cuda" else "cpu"
    trainer = L.Trainer(accelerator=accel, devices=1, precision="bf16-mixed" if accel == "gpu" else "32-true",
                        max_steps=warmup + steps, logger=False, enable_checkpointing=False, callbacks=[timer],
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        benchmark=accel == "gpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module)
    sync(device)
    rate = batch * timer.n / (timer.t1 - timer.t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return rate, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--backbone", default="resnet18", help="any backbone.name (resnet18, timm:<model>, ...)")
    ap.add_argument("--backbone-kwargs", default="{}", help="backbone.kwargs as YAML, e.g. '{depth: 6}'")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--images", type=int, default=20000, help="device-resident random uint8 images (3x32x32)")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    kwargs = yaml.safe_load(args.backbone_kwargs) or {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    info = DatasetInfo(name="random", num_classes=10, channels=3, native_size=args.size, crop_size=args.size,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ds = ImageDataset(imgs, torch.randint(0, 10, (args.images,), generator=g))
    data = DatasetSplits(info=info, pretrain=ds, bank=ds, test=ds)
    ceil = ceiling(args.backbone, args.batch, args.size, device, args.steps, args.warmup, kwargs)
    rows = []
    print(f"device {environment()['device']}; backbone {args.backbone} {kwargs or ''}; batch {args.batch}; "
          f"{args.size}x{args.size}")
    print(f"{'':12s} {'images/s':>10s} {'of ceiling':>10s} {'peak GiB':>9s}")
    print(f"{'ceiling':12s} {ceil:10.0f} {1.0:10.2f}")
    for m in args.methods:
        rate, peak = method_rate(m, args.backbone, args.batch, args.size, device, args.steps, args.warmup, data, kwargs)
        rows.append({"method": m, "images_per_s": round(rate, 1), "ratio": round(rate / ceil, 3),
                     "peak_gib": None if peak != peak else round(peak, 2)})
        print(f"{m:12s} {rate:10.0f} {rate / ceil:10.2f} {peak:9.2f}")
    if args.save:
        env = environment()
        out = Path(__file__).parent / "results" / (
            f"throughput_{'cuda' if device.type == 'cuda' else 'cpu'}_{args.backbone.replace(':', '-')}"
            f"{'-' + '-'.join(f'{k}{v}' for k, v in kwargs.items()) if kwargs else ''}_{datetime.now():%Y%m%d}.json")
        out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "backbone": args.backbone,
                                   "backbone_kwargs": kwargs,
                                   "batch": args.batch, "size": args.size, "steps": args.steps,
                                   "ceiling_images_per_s": round(ceil, 1), "methods": rows, "environment": env},
                                  indent=2))
        print(f"saved {out}")


if __name__ == "__main__":
    main()
