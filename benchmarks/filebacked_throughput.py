"""Decoded images/s of the file-backed data path (FileImageDataset + DecodedBatchDataset + DataLoader).

    python benchmarks/filebacked_throughput.py                 # 2000 generated 64x64 JPEGs, 0 and 2 workers
    python benchmarks/filebacked_throughput.py --images 5000 --workers 0 2 4 --save
    python benchmarks/filebacked_throughput.py --root /data/imagenet/train --size 64 --save

Cases: a folder of JPEG files decoded by Pillow (generated here: smooth random 64x64 images in
10 class folders, quality 90, unless ``--root`` names a real folder), and an STL-10-style binary
file (column-major 96x96x3, memory-mapped) of the same number of images. Each is read through
``DataLoader(DecodedBatchDataset(ds), sampler=EpochBatchSampler(N, batch), batch_size=None,
num_workers=W)``; a run is one warm-up epoch (worker start-up, page cache), then ``--epochs``
timed epochs with persistent workers. Also timed: ``materialize()`` (the in-memory path:
a thread pool decodes everything once). ``--save`` writes benchmarks/results/filebacked_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relssl.data import (  # noqa: E402
    ArraySource,
    DecodedBatchDataset,
    EpochBatchSampler,
    FileImageDataset,
    load_dataset,
)


def make_jpeg_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    g = np.random.default_rng(seed)
    for i in range(n):
        base = g.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BICUBIC)
        d = root / f"class_{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"img_{i:06d}.jpg", quality=90)


def make_stl_binary(path: Path, n: int, seed: int = 0) -> None:
    g = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for i in range(0, n, 500):
            f.write(g.integers(0, 256, (min(500, n - i), 3, 96, 96), dtype=np.uint8).tobytes())


def loader_rate(ds, batch: int, workers: int, epochs: int) -> float:
    sampler = EpochBatchSampler(len(ds), batch, seed=0)
    loader = DataLoader(DecodedBatchDataset(ds), sampler=sampler, batch_size=None, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    for _ in loader:  # warm-up epoch: worker start-up, page cache
        pass
    n, t0 = 0, time.perf_counter()
    for e in range(epochs):
        sampler.set_epoch(e + 1)
        for images, _ in loader:
            n += len(images)
    return n / (time.perf_counter() - t0)


def materialize_rate(ds) -> float:
    t0 = time.perf_counter()
    ds.materialize()
    return len(ds) / (time.perf_counter() - t0)


def versions() -> dict:
    import PIL
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2000, help="images to generate (default 2000)")
    p.add_argument("--size", type=int, default=64, help="decoded size (default 64)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    p.add_argument("--root", default=None, help="a real image folder instead of generated JPEGs")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/filebacked_throughput_<device>.json")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
    load_at_start = list(os.getloadavg())  # other jobs on the machine skew the rates: recorded with them

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.root) if args.root else tmp / "jpegs"
        if not args.root:
            t0 = time.perf_counter()
            make_jpeg_folder(root, args.images, args.size)
            print(f"generated {args.images} {args.size}x{args.size} JPEGs in {time.perf_counter() - t0:.1f} s")
        folder = load_dataset("unlabeled_folder", root=str(root), size=args.size, memory_limit=0,
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).pretrain
        make_stl_binary(tmp / "unlabeled_X.bin", len(folder))
        stl = FileImageDataset([ArraySource(path=tmp / "unlabeled_X.bin", shape=(len(folder), 3, 96, 96),
                                            layout="NCWH")], 96)
        cases = [(f"JPEG folder -> {args.size}px" + (f" ({args.root})" if args.root else ""), folder),
                 ("STL-10 binary memmap, 96px", stl)]
        for name, ds in cases:
            for w in args.workers:
                rate = loader_rate(ds, min(args.batch, len(ds)), w, args.epochs)
                rows.append({"case": name, "path": f"DataLoader, {w} workers", "workers": w, "images": len(ds),
                             "images_per_s": round(rate, 1)})
            rows.append({"case": name, "path": "materialize() (thread pool)", "workers": None, "images": len(ds),
                         "images_per_s": round(materialize_rate(ds), 1)})

    width = max(len(r["case"]) for r in rows)
    print(f"\n{'case':<{width}}  {'path':<28} {'images/s':>10}")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['path']:<28} {r['images_per_s']:>10.0f}")
    device = "cpu"
    result = {
        "benchmark": "filebacked_throughput", "rows": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg())},
        "versions": versions(), "date": datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "settings": {"batch": args.batch, "epochs": args.epochs, "size": args.size, "generated": not args.root},
    }
    if args.save:
        out = Path(__file__).resolve().parent / "results" / f"filebacked_throughput_{device}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
