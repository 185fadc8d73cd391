"""Augmented views per second: relssl's batched path against torchvision per-image transforms.

Both sides apply the MoCo v2 "strong" recipe (RandomResizedCrop(32, 0.2-1), flip 0.5,
ColorJitter(0.4, 0.4, 0.4, 0.1) w.p. 0.8, grayscale 0.2, GaussianBlur(13, 0.1-2) w.p. 0.5,
ToDtype, Normalize) to the same uint8 data, batch 512:

* ours: ``relssl.augment.augment_batch`` on batches already on the device (CUDA if
  present, else CPU), one call per batch; also ``make_views`` with two strong views
  (how a MoCo/SimCLR step asks for them), counted as 2 views per image.
* torchvision: ``torchvision.transforms.v2`` per image inside a ``DataLoader`` with
  ``--workers`` worker processes (the usual input pipeline), batches moved to the
  device (pinned, non_blocking) when it is CUDA.

Data: random uint8 tensors shaped like Fashion-MNIST (N, 1, 28, 28) -> 32x32 views
and like CIFAR (N, 3, 32, 32) -> 32x32 views (the content does not change the cost).

    python benchmarks/augment_throughput.py                 # print the rates
    python benchmarks/augment_throughput.py --save          # and write benchmarks/results/augment_throughput_<device>.json
    python benchmarks/augment_throughput.py --batches 50 --workers 8 --compile   # on a GPU machine

The default run takes well under a minute on 2 CPU cores. The record keeps the load
average (and a median-batch rate for our path): on a shared machine, other processes
stall torch's multi-threaded CPU ops badly (every op waits for its slowest thread),
so compare runs at similar load, or pass ``--threads 1``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torchvision
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset

from relssl.augment import RECIPES, augment_batch, draw_uniforms, make_views, views_from_uniforms

DATASETS = {  # name: (channels, side, mean, std)
    "fmnist_1x28_to_32": (1, 28, (0.2860,), (0.3530,)),
    "cifar_3x32_to_32": (3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}


class _PerImage(Dataset):
    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


def torchvision_strong(size: int, mean, std, kernel: int) -> T.Compose:
    r = RECIPES["strong"]
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=r.crop_scale, ratio=r.crop_ratio, antialias=True),
            T.RandomHorizontalFlip(r.flip_p),
            T.RandomApply([T.ColorJitter(r.brightness, r.contrast, r.saturation, r.hue)], p=r.jitter_p),
            T.RandomGrayscale(r.grayscale_p),
            T.RandomApply([T.GaussianBlur(kernel, r.blur_sigma)], p=r.blur_p),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ]
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rates(times: list[float], per_batch: int) -> dict[str, float]:
    """Views/s from per-batch times: over the whole run (the headline number), and from
    the median batch (robust to other processes briefly taking the CPU; meaningless for
    a DataLoader, whose workers deliver batches in bursts)."""
    times = sorted(times)
    return {"total": per_batch * len(times) / sum(times), "median": per_batch / times[len(times) // 2]}


def bench_ours(images, mean, std, device, batch, batches, views, fn) -> dict[str, float]:
    """Views per second of ``fn`` over ``batches`` batches (after 3 warm-up batches)."""
    g = torch.Generator(device=device).manual_seed(0)
    n = images.shape[0] // batch
    recipes = [RECIPES["strong"]] * views
    for i in range(3):
        fn(images[(i % n) * batch : (i % n + 1) * batch], recipes, mean, std, g)
    _sync(device)
    times = []
    for i in range(batches):
        t0 = time.perf_counter()
        out = fn(images[(i % n) * batch : (i % n + 1) * batch], recipes, mean, std, g)
        _sync(device)
        times.append(time.perf_counter() - t0)
    assert out[0].shape[0] == batch
    return _rates(times, batch * views)


def bench_torchvision(images, mean, std, device, batch, batches, workers) -> dict[str, float]:
    """Views per second delivered by a DataLoader of per-image torchvision transforms:
    time between consecutive batches, after the first one (workers started and warm)."""
    tf = torchvision_strong(RECIPES["strong"].crop_size, mean, std, RECIPES["strong"].kernel_size())
    loader = DataLoader(
        _PerImage(images, tf),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    it = iter(loader)
    next(it).to(device, non_blocking=True)
    _sync(device)
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        x = next(it).to(device, non_blocking=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    assert x.shape[0] == batch
    del it
    return _rates(times, batch)


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return device.type


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader workers for torchvision")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(views_from_uniforms) (compiles for ~30 s)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads for our path (0: torch's default)")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/augment_throughput_<device>.json")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size
    # enough images for the DataLoader to serve its warm-up batch, the timed batches and its prefetch
    n_images = batch * (args.batches + 2 + 2 * max(args.workers, 1))
    fns = {"ours": lambda x, rs, m, s, g: [augment_batch(x, rs[0], m, s, g)], "ours_2views": make_views}
    if args.compile:  # the random draws stay outside the compiled graph
        compiled = torch.compile(views_from_uniforms, fullgraph=True)
        fns["ours_2views_compiled"] = lambda x, rs, m, s, g: compiled(x, rs, m, s, draw_uniforms(x.shape[0], len(rs), g, x.device))

    record = {
        "benchmark": "augment_throughput",
        "recipe": "strong (MoCo v2 aug+), 32x32 views",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch,
        "batches": args.batches,
        "workers": args.workers,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": {},
    }
    record["loadavg_before"] = list(os.getloadavg())
    for name, (c, side, mean, std) in DATASETS.items():
        cpu_images = torch.randint(0, 256, (n_images, c, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        dev_images = cpu_images.to(device)
        res = {}
        for label, fn in fns.items():
            views = 1 if label == "ours" else 2
            res[label] = bench_ours(dev_images, mean, std, device, batch, args.batches * 4, views, fn)
        res["torchvision"] = bench_torchvision(cpu_images, mean, std, device, batch, args.batches, args.workers)
        res["ratio_ours_vs_torchvision"] = res["ours"]["total"] / res["torchvision"]["total"]
        res["ours_ms_per_batch"] = 1e3 * batch / res["ours"]["total"]
        record["results"][name] = res
        print(
            f"{name:18s} ours {res['ours']['total']:>9,.0f} views/s ({res['ours_ms_per_batch']:.1f} ms/batch)"
            f" | 2 views {res['ours_2views']['total']:>9,.0f}"
            + (f" | compiled 2 views {res['ours_2views_compiled']['total']:>9,.0f}" if args.compile else "")
            + f" | torchvision, {args.workers} workers {res['torchvision']['total']:>7,.0f}"
            f" | ratio {res['ratio_ours_vs_torchvision']:.1f}x"
            f"  (median-batch rate of ours: {res['ours']['median']:,.0f})",
            flush=True,
        )
    record["loadavg_after"] = list(os.getloadavg())
    print(f"views/s over the timed batches; device {record['device']} ({record['device_name']}), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {record['cpu_count']} CPUs, {record['torch_threads']} torch threads, batch {batch}, "
          f"load average {record['loadavg_before'][0]:.2f} -> {record['loadavg_after'][0]:.2f}")
    if args.save:
        out = Path(__file__).resolve().parent / "results" / f"augment_throughput_{device_slug(device)}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
