"""What the false-negative diagnostics cost during training (issue #13 asks: under 3% of step time).

For each method, one short real pretraining run on Fashion-MNIST with the diagnostics on every
``--every`` steps; a callback times every training step (``torch.cuda.synchronize`` around it on a
GPU). The cost of one diagnostic call is the median time of the diagnostic steps minus the median
of the others; the overhead at ``trainer.diagnose_every = N`` is ``cost / (N * step time)``,
reported for the default N = 50 (and for N = 1, the worst case).

    python benchmarks/diagnostics_overhead.py                      # CPU: convnet_tiny, batch 256
    python benchmarks/diagnostics_overhead.py --save               # write benchmarks/results/diagnostics_overhead_<device>.json
    python benchmarks/diagnostics_overhead.py --backbone resnet18 --batch 512 --steps 120 --save   # on a GPU

On a shared CPU the step times are noisy; the median over many steps keeps the estimate honest,
and the record keeps the load average.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

from relssl.config import resolve_recipe
from relssl.config import load_config
from relssl.engine import pretrain
from relssl.config import load_data
from relssl.engine.rundir import environment

METHODS = ("mocov2", "simclr", "msvq", "nnclr", "wcl")


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._sync(module)
        self._t0, self._step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync(module)
        self.times[self._step] = time.perf_counter() - self._t0


def measure(method: str, args, splits) -> dict:
    overrides = [f"backbone.name={args.backbone}", f"optim.batch_size={args.batch}", "optim.epochs=100",
                 f"optim.max_steps={args.steps}", "optim.warmup_epochs=0", "trainer.knn_every=0",
                 "trainer.knn_at_start=false", "trainer.progress_bar=false", f"trainer.diagnose_every={args.every}",
                 f"output_dir={args.runs_dir}", "trainer.checkpoint_every=1000"]
    if args.device == "cpu":
        overrides.append("trainer.accelerator=cpu")
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"), overrides)
    timer = StepTimer()
    pretrain(cfg, splits=splits, quiet=True, extra_callbacks=[timer])
    skip = args.warmup_steps  # first steps: allocation, cudnn autotuning
    diag = [t for s, t in timer.times.items() if s >= skip and s % args.every == 0]
    plain = [t for s, t in timer.times.items() if s >= skip and s % args.every != 0]
    step = statistics.median(plain)
    cost = max(0.0, statistics.median(diag) - step)
    return {"method": method, "steps_timed": len(timer.times) - skip, "diagnostic_steps": len(diag),
            "median_step_s": step, "median_diag_step_s": statistics.median(diag), "cost_per_call_s": cost,
            "overhead_at_every_50_pct": 100 * cost / (50 * step), "overhead_at_every_1_pct": 100 * cost / step}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--backbone", default=None, help="default: convnet_tiny on CPU, resnet18 on GPU")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=4, help="diagnostic steps in the timed run (every N steps)")
    p.add_argument("--warmup-steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs-dir", default="/tmp/relssl-bench-diag")
    p.add_argument("--save", action="store_true")
    args = p.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.backbone = args.backbone or ("resnet18" if args.device == "cuda" else "convnet_tiny")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(resolve_recipe("fashion_mnist/mocov2"), [])
    splits = load_data(cfg)
    rows = []
    for method in args.methods:
        r = measure(method, args, splits)
        rows.append(r)
        print(f"{method:8s} step {1000 * r['median_step_s']:8.1f} ms   diagnostics {1000 * r['cost_per_call_s']:7.2f} ms/call"
              f"   overhead every 50 steps: {r['overhead_at_every_50_pct']:.3f}%   every step: "
              f"{r['overhead_at_every_1_pct']:.2f}%", flush=True)
    if args.save:
        record = {"benchmark": "diagnostics_overhead", "device": args.device, "backbone": args.backbone,
                  "batch_size": args.batch, "steps": args.steps, "every": args.every,
                  "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
                  "environment": environment(),
                  "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                  "results": rows}
        out = Path(__file__).parent / "results" / f"diagnostics_overhead_{args.device}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, out)
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
