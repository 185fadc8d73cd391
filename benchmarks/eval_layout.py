"""Feature extraction for evaluation in NCHW against channels_last (NHWC), on this machine.

relssl's evaluation (``relssl eval``, ``relssl embed``, the fine-tuning protocol) extracts features
in the memory layout the run trained in (``backbone.channels_last``, by default NHWC on every
device). This times the extraction of Fashion-MNIST test images with an exported backbone in both
layouts, alternating them over a few rounds, and reports images/s, the speed-up and the largest
difference between the two layouts' features (a layout, not another computation).

    python benchmarks/eval_layout.py                                   # the published MoCo v2 backbone
    python benchmarks/eval_layout.py --weights RUN/backbone.safetensors --images 10000 --rounds 3 --save

Run it alone: the share of the CPUs other processes used meanwhile is reported beside the times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from steptime import cpu_usage, others_share  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "zoo" / "cpu-budget-mocov2-seed2.safetensors",
                    help="a backbone file of relssl export (default: the published MoCo v2 one)")
    ap.add_argument("--images", type=int, default=10000, help="test images per timing (at most 10,000)")
    ap.add_argument("--rounds", type=int, default=3, help="timings per layout, alternating")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/eval_layout_cpu.json")
    args = ap.parse_args(argv)
    if args.images < 1 or args.rounds < 1 or args.batch_size < 1:
        ap.error("--images, --rounds and --batch-size must be >= 1")

    from relssl.data import load_dataset
    from relssl.engine.rundir import environment
    from relssl.errors import CheckpointError, DataError
    from relssl.evaluate.export import load_backbone, read_metadata
    from relssl.metrics.knn import extract_features

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        meta = read_metadata(args.weights)
        net = load_backbone(args.weights)
        splits = load_dataset(meta["dataset"])
    except (CheckpointError, DataError) as err:
        print(f"eval_layout: error: {err}", file=sys.stderr)
        return 2
    images = splits.test.materialize().images[:args.images]
    size, mean, std = meta["input_size"], meta["mean"], meta["std"]

    def timed(channels_last: bool) -> tuple[float, torch.Tensor]:
        net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        t0 = time.perf_counter()
        f = extract_features(net, images, size, mean, std, batch_size=args.batch_size, channels_last=channels_last)
        return len(images) / (time.perf_counter() - t0), f

    timed(True)  # warm-up: the first oneDNN calls pick their kernels
    rates: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    before = cpu_usage()
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        r, f_nchw = timed(False)
        rates["nchw"].append(r)
        r, f_nhwc = timed(True)
        rates["channels_last"].append(r)
    wall = time.perf_counter() - t0
    after = cpu_usage()
    others = others_share(before, after, wall)
    others = None if others is None else round(others, 3)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "benchmark": "eval_layout", "weights": str(args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT)
                                                   else args.weights),
        "backbone": meta["backbone"], "input_size": size, "images": len(images), "batch_size": args.batch_size,
        "rounds": args.rounds, "threads": torch.get_num_threads(),
        "images_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "median_images_per_s": {k: round(v, 1) for k, v in med.items()},
        "speedup": round(med["channels_last"] / med["nchw"], 3),
        "max_abs_feature_difference": float((f_nchw - f_nhwc).abs().max()),
        "other_processes_cpu_share": others,
        "environment": environment(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(f"eval_layout: {meta['backbone']} at {size} px, {len(images)} images, {torch.get_num_threads()} threads: "
          f"NCHW {med['nchw']:.0f} images/s, channels_last {med['channels_last']:.0f} images/s "
          f"({out['speedup']:.2f}x); largest feature difference {out['max_abs_feature_difference']:.2e}"
          + (f"; other processes used {100 * others:.0f}% of the CPUs" if others is not None else ""))
    if args.save:
        path = ROOT / "benchmarks" / "results" / "eval_layout_cpu.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"eval_layout: wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
