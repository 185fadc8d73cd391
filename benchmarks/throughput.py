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
its loss, EMA and queue updates. Both use channels_last (the engine's default on every device;
``--layout nchw`` for both in NCHW), and bf16 autocast on a GPU, float32 on the CPU. Images/s counts
each source image once (not each view).

Arithmetic: one more step of the ceiling and of each method runs under
``torch.utils.flop_counter.FlopCounterMode`` (forward, loss, backward: the convolutions and matrix
products); its floating-point operations over the timed step time give the GFLOP/s the step achieves,
set against a large matmul timed in the same run on the same device (float32 2048x2048 on a CPU, bf16
8192x8192 on a GPU): the fraction of the machine's practical peak that the step uses.

GPU busy (CUDA only): after the timed steps, 5 more steps run under torch.profiler, which records
how long the GPU spent in kernels and copies (torch's "Self CUDA time total"); divided by the
unprofiled step time it says whether a step is bound by the GPU's arithmetic (near 1) or by the
host launching work (well below 1, where fewer, larger kernels, CUDA graphs or torch.compile pay).
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relssl.config import config_from_dict  # noqa: E402
from relssl.data import DatasetSplits, ImageDataset  # noqa: E402
from relssl.data.datasets import DatasetInfo  # noqa: E402
from relssl.engine.module import PretrainModule  # noqa: E402
from relssl.engine.rundir import environment  # noqa: E402
from relssl.methods import METHODS  # noqa: E402
from relssl.nn import build_backbone, make_teacher  # noqa: E402
from steptime import matmul_gflops  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


PROFILED_STEPS = 5


def device_busy_ms(prof: torch.profiler.profile) -> float:
    """Milliseconds of GPU kernels and copies recorded by ``prof`` (the sum torch's profiler table
    prints as "Self CUDA time total": device events only, user annotations excluded)."""
    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.self_device_time_total for e in prof.events()
               if e.device_type == cuda and not getattr(e, "is_user_annotation", False)) / 1e3


def profiler() -> torch.profiler.profile | None:
    """A started CUDA profiler, or None (said on stdout) where it cannot start: the GPU-busy column is
    then empty and the throughput itself still measured."""
    try:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
        prof.__enter__()
        return prof
    except Exception as e:  # noqa: BLE001 - a profiler that cannot start must not cost the throughput rows
        print(f"throughput: GPU busy not measured: the profiler did not start ({type(e).__name__}: {e})", flush=True)
        return None


def ceiling(backbone_name: str, batch: int, size: int, device: torch.device, steps: int, warmup: int,
            kwargs: dict | None = None, channels_last: bool = True) -> tuple[float, float | None, float]:
    """images/s of the ceiling's loop, on CUDA the GPU's busy milliseconds per step, and the
    floating-point operations of one step."""
    student, _ = build_backbone(backbone_name, in_channels=3, cifar_stem=True, kwargs=kwargs, image_size=size)
    student.to(device)
    teacher = make_teacher(student).to(device)
    cl = channels_last
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
    rate = batch * steps / (time.perf_counter() - t0)
    busy = None
    prof = profiler() if device.type == "cuda" else None
    if prof is not None:
        for _ in range(PROFILED_STEPS):
            step()
        sync(device)
        prof.__exit__(None, None, None)
        busy = device_busy_ms(prof) / PROFILED_STEPS
    with FlopCounterMode(display=False) as counter:
        step()
    return rate, busy, counter.get_total_flops()


class Timer(L.Callback):
    """Wall time from the end of step ``warmup`` to the end of step ``stop``; on CUDA, then the GPU's
    busy time over the next ``PROFILED_STEPS`` steps under the profiler; then the floating-point
    operations of the step after those (the last), counted by ``FlopCounterMode``."""

    def __init__(self, warmup: int, stop: int, profile: bool) -> None:
        self.warmup, self.stop, self.profile = warmup, stop, profile
        self.count_at = stop + (PROFILED_STEPS if profile else 0)
        self.t0 = self.t1 = self.prof = self.busy_ms = self.counter = self.flops = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.profile and trainer.global_step == self.stop:
            self.prof = profiler()
        if trainer.global_step == self.count_at:  # the whole step: forward, loss, backward, optimizer
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.warmup:
            sync(pl_module.device)
            self.t0 = time.perf_counter()
        elif step == self.stop:
            sync(pl_module.device)
            self.t1 = time.perf_counter()
        elif self.prof is not None and step == self.stop + PROFILED_STEPS:
            sync(pl_module.device)
            self.prof.__exit__(None, None, None)
            self.busy_ms = device_busy_ms(self.prof) / PROFILED_STEPS
            self.prof = None
        if self.counter is not None and step == self.count_at + 1:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()
            self.counter = None


def method_rate(method: str, backbone_name: str, batch: int, size: int, device: torch.device, steps: int,
                warmup: int, data: DatasetSplits, kwargs: dict | None = None,
                channels_last: bool = True) -> tuple[float, float, float | None, float | None]:
    """images/s of the method's real step, its peak GPU memory (GiB), on CUDA the GPU's busy ms per
    step, and the floating-point operations of one step."""
    cuda = device.type == "cuda"
    total = warmup + steps + (PROFILED_STEPS if cuda else 0) + 1  # + the step whose operations are counted
    raw = {"method": {"name": method},
           "backbone": {"name": backbone_name, "bn_splits": 1, "kwargs": kwargs or {}, "channels_last": channels_last},
           "data": {"crop_size": size},
           "optim": {"batch_size": batch, "epochs": 10, "warmup_epochs": 0, "max_steps": total},
           "trainer": {"knn_every": 0, "knn_at_start": False, "progress_bar": False}}
    if method == "mocov2":
        # symmetric: two student forward+backward and two teacher forward passes per image, the
        # same work as the ceiling (the asymmetric default does half of it)
        raw["method"].update(queue_size=4096, symmetric=True)
    cfg = config_from_dict(raw)
    L.seed_everything(0, verbose=False)
    module = PretrainModule(cfg, data)
    timer = Timer(warmup, warmup + steps, profile=cuda)
    accel = "gpu" if device.type == "cuda" else "cpu"
    trainer = L.Trainer(accelerator=accel, devices=1, precision="bf16-mixed" if accel == "gpu" else "32-true",
                        max_steps=total, logger=False, enable_checkpointing=False, callbacks=[timer],
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        benchmark=accel == "gpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module)
    sync(device)
    rate = batch * steps / (timer.t1 - timer.t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return rate, peak, timer.busy_ms, timer.flops


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
    ap.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last",
                    help="memory layout of weights and images, for the ceiling and the methods alike")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    cl = args.layout == "channels_last"
    kwargs = yaml.safe_load(args.backbone_kwargs) or {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    info = DatasetInfo(name="random", num_classes=10, channels=3, native_size=args.size, crop_size=args.size,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ds = ImageDataset(imgs, torch.randint(0, 10, (args.images,), generator=g))
    data = DatasetSplits(info=info, pretrain=ds, bank=ds, test=ds)
    peak_gflops = matmul_gflops(device)
    ceil, ceil_busy, ceil_flops = ceiling(args.backbone, args.batch, args.size, device, args.steps, args.warmup,
                                          kwargs, cl)
    rows = []
    print(f"device {environment()['device']}; backbone {args.backbone} {kwargs or ''}; batch {args.batch}; "
          f"{args.size}x{args.size}; {args.layout}; matmul {peak_gflops:,.0f} GFLOP/s "
          f"({'bf16' if device.type == 'cuda' else 'float32'})")
    print(f"{'':12s} {'images/s':>10s} {'of ceiling':>10s} {'peak GiB':>9s} {'step ms':>8s} {'GFLOP/step':>10s} "
          f"{'GFLOP/s':>9s} {'of matmul':>9s}" + (f" {'GPU ms':>7s} {'GPU busy':>8s}" if device.type == "cuda" else ""))

    def line(name: str, rate: float, peak: float, busy: float | None, flops: float | None) -> dict:
        step_ms = 1e3 * args.batch / rate
        achieved = flops / 1e9 / (step_ms / 1e3) if flops else None
        print(f"{name:12s} {rate:10.0f} {rate / ceil:10.2f} {peak:9.2f} {step_ms:8.1f}"
              + (f" {flops / 1e9:10.1f} {achieved:9.1f} {achieved / peak_gflops:9.2f}" if achieved else f" {'-':>10s} "
                 f"{'-':>9s} {'-':>9s}")
              + (f" {busy:7.1f} {busy / step_ms:8.2f}" if busy is not None else ""))
        return {"images_per_s": round(rate, 1), "ratio": round(rate / ceil, 3),
                "peak_gib": None if peak != peak else round(peak, 2), "step_ms": round(step_ms, 2),
                "gflop_per_step": round(flops / 1e9, 2) if flops else None,
                "gflops_achieved": round(achieved, 1) if achieved else None,
                "fraction_of_matmul": round(achieved / peak_gflops, 3) if achieved else None,
                "gpu_busy_ms_per_step": None if busy is None else round(busy, 2),
                "gpu_busy_fraction": None if busy is None else round(busy / step_ms, 3)}

    ceiling_row = line("ceiling", ceil, float("nan"), ceil_busy, ceil_flops)
    for m in args.methods:
        rate, peak, busy, flops = method_rate(m, args.backbone, args.batch, args.size, device, args.steps, args.warmup,
                                              data, kwargs, cl)
        rows.append({"method": m, **line(m, rate, peak, busy, flops)})
    if args.save:
        env = environment()
        out = Path(__file__).parent / "results" / (
            f"throughput_{'cuda' if device.type == 'cuda' else 'cpu'}_{args.backbone.replace(':', '-')}"
            f"{'-' + '-'.join(f'{k}{v}' for k, v in kwargs.items()) if kwargs else ''}"
            f"{'' if cl else '_nchw'}_{datetime.now():%Y%m%d}.json")
        out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "backbone": args.backbone,
                                   "backbone_kwargs": kwargs,
                                   "batch": args.batch, "size": args.size, "steps": args.steps, "layout": args.layout,
                                   "ceiling_images_per_s": round(ceil, 1), "ceiling": ceiling_row,
                                   "matmul_gflops": round(peak_gflops, 1),
                                   "matmul_dtype": "bfloat16" if device.type == "cuda" else "float32",
                                   "methods": rows, "environment": env},
                                  indent=2))
        print(f"saved {out}")


if __name__ == "__main__":
    main()
