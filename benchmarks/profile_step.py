"""Where a training step's time goes on this machine, and how close it runs to the CPU's peak.

    python benchmarks/profile_step.py                                   # simclr, mocov2, msvq; the CPU budget's net
    python benchmarks/profile_step.py --methods simclr --backbone convnet --crop 32 --save
    python benchmarks/profile_step.py --options --methods simclr mocov2 --steps 20 --warmup 5 --save

For each method, on real Fashion-MNIST images, a bare loop (no Lightning) times the parts of a
step: the random views, the forward pass and loss (backbone, heads, loss, queue writes), the
backward pass, the optimizer step and the after-step work (EMA teachers), then the same step
through the engine (Lightning, logging, the NaN guard) for the framework's share. The backbone's
own forward+backward on the same views is timed beside it, and the step's floating-point
operations (``torch.utils.flop_counter``) give the rate it achieves against a large float32
matrix multiply timed in the same run (the practical peak of this CPU). Results:
``benchmarks/results/profile_step_<backbone>.json`` with ``--save``. Time it alone.

``--options`` times the same bare step with one change at a time against eager float32 (channels_last
weights and views, ``torch.compile`` of the conv nets, a 512-wide projector, one thread instead of
all): ``benchmarks/results/profile_step_options_<backbone>_<crop>px_b<batch>.json`` (a rerun replaces the rows it
times again and keeps the others).
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relssl.augment import make_views  # noqa: E402
from relssl.config import resolve_recipe  # noqa: E402
from relssl.config import load_config  # noqa: E402
from relssl.data import DatasetSplits  # noqa: E402
from relssl.engine.module import PretrainModule  # noqa: E402
from relssl.config import load_data
from relssl.engine.rundir import environment  # noqa: E402
from relssl.methods import StepInfo  # noqa: E402
from steptime import matmul_gflops  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def profile(method: str, overrides: list[str], splits: DatasetSplits, steps: int, warmup: int) -> dict:
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"), overrides)
    L.seed_everything(0, verbose=False)
    module = PretrainModule(cfg, splits)
    m = module.method
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = module.train_images
    b = cfg.optim.batch_size
    parts = {"views": 0.0, "forward_loss": 0.0, "backward": 0.0, "optimizer": 0.0, "after_step": 0.0}
    backbone_s = 0.0
    flops = None
    for i in range(warmup + steps):
        g = torch.Generator().manual_seed(i)
        idx = torch.randint(0, len(images), (b,), generator=g)
        t0 = time.perf_counter()
        views = make_views(images[idx], module.recipes, module.mean, module.std, g)
        t1 = time.perf_counter()
        info = StepInfo(step=i, progress=i / (warmup + steps), index=idx, generator=g)
        if i == warmup - 1:  # count the step's operations once (forward, loss and backward)
            with FlopCounterMode(display=False) as counter:
                loss = m.training_step(views, info)["loss"]
                loss.backward()
            flops = counter.get_total_flops()
            opt.zero_grad(set_to_none=True)
            continue
        out = m.training_step(views, info)
        t2 = time.perf_counter()
        out["loss"].backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        m.after_optimizer_step(StepInfo(step=i + 1, progress=(i + 1) / (warmup + steps)))
        t5 = time.perf_counter()
        # the backbone alone on the same views: forward + backward of every view (what a step must do at least)
        xb = torch.cat(views[:2])
        t6 = time.perf_counter()
        module.backbone(xb).float().pow(2).mean().backward()
        t7 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                parts[k] += dt
            backbone_s += t7 - t6
    total = sum(parts.values())
    return {"method": method, "overrides": overrides, "batch": b,
            "seconds_per_step": round(total / steps, 4),
            "images_per_s_bare": round(b * steps / total, 1),
            "share": {k: round(v / total, 3) for k, v in parts.items()},
            "backbone_fwd_bwd_seconds_per_step": round(backbone_s / steps, 4),
            "backbone_share": round(backbone_s / total, 3),
            "gflop_per_step": round(flops / 1e9, 2) if flops else None,
            "gflops_achieved": round(flops / 1e9 / (total / steps), 1) if flops else None}


# the knobs issue #19 asked about, each timed on the same bare step (views, forward + loss, backward,
# optimizer, after-step): name -> (extra overrides, how the built method is changed)
OPTIONS = {
    "eager": ([], None),
    "channels_last": ([], "channels_last"),
    "compile": ([], "compile"),
    "projector_512": (["method.proj_hidden=512"], None),
    "one_thread": ([], "one_thread"),
}


def time_option(method: str, overrides: list[str], splits: DatasetSplits, steps: int, warmup: int, option: str) -> dict:
    """Seconds per bare training step of ``method`` with one of :data:`OPTIONS` applied."""
    extra, change = OPTIONS[option]
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"), overrides + extra)
    L.seed_everything(0, verbose=False)
    module = PretrainModule(cfg, splits)
    m = module.method
    threads = torch.get_num_threads()
    if change == "one_thread":
        torch.set_num_threads(1)
    if change == "channels_last":
        m.to(memory_format=torch.channels_last)
    if change == "compile":  # every conv net of the method (students and EMA teachers), compiled in place
        for sub in m.modules():
            if isinstance(sub, torch.nn.Sequential) and any(isinstance(c, torch.nn.Conv2d) for c in sub.children()):
                sub.compile()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, b = module.train_images, cfg.optim.batch_size
    compile_s, total = 0.0, 0.0
    try:
        for i in range(warmup + steps):
            g = torch.Generator().manual_seed(i)
            idx = torch.randint(0, len(images), (b,), generator=g)
            t0 = time.perf_counter()
            views = make_views(images[idx], module.recipes, module.mean, module.std, g)
            if change == "channels_last":
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            out = m.training_step(views, StepInfo(step=i, progress=i / (warmup + steps), index=idx, generator=g))
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            m.after_optimizer_step(StepInfo(step=i + 1, progress=(i + 1) / (warmup + steps)))
            dt = time.perf_counter() - t0
            if i >= warmup:
                total += dt
            elif i == 0:
                compile_s = dt
    finally:
        torch.set_num_threads(threads)
    return {"method": method, "option": option, "overrides": overrides + extra, "seconds_per_step": round(total / steps, 4),
            "first_step_seconds": round(compile_s, 2), "images_per_s": round(b * steps / total, 1)}


def engine_rate(method: str, overrides: list[str], splits: DatasetSplits, steps: int, warmup: int) -> float:
    """images/s of the same step through the engine (Lightning, logging, NaN guard)."""
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"),
                      overrides + [f"optim.max_steps={warmup + steps}", "trainer.knn_every=0", "trainer.knn_at_start=false",
                                   "trainer.progress_bar=false", "trainer.diagnose_every=0", "trainer.log_every_n_steps=20"])
    L.seed_everything(0, verbose=False)
    module = PretrainModule(cfg, splits)
    marks = {}

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            marks[trainer.global_step] = time.perf_counter()

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                        callbacks=[Clock()], enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    trainer.fit(module)
    return cfg.optim.batch_size * steps / (marks[warmup + steps] - marks[warmup])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["simclr", "mocov2", "msvq"])
    ap.add_argument("--backbone", default="convnet_grid")
    ap.add_argument("--crop", type=int, default=28)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--options", nargs="*", choices=list(OPTIONS),
                    help=f"time the step with each of {', '.join(OPTIONS)} (none named: all) instead of the breakdown")
    args = ap.parse_args(argv)
    base = [f"backbone.name={args.backbone}", "backbone.bn_splits=1", f"data.crop_size={args.crop}",
            f"optim.batch_size={args.batch}", "trainer.accelerator=cpu"]
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"), base)
    full = load_data(cfg)
    splits = DatasetSplits(info=full.info, pretrain=full.pretrain.subset(10000, seed=0), bank=full.bank.subset(512, seed=0),
                           test=full.test.subset(512, seed=0))
    if args.options is not None:
        return compare_options(args, base, splits, argv)
    peak = matmul_gflops()
    rows = []
    for method in args.methods:
        row = profile(method, base, splits, args.steps, args.warmup)
        row["images_per_s_engine"] = round(engine_rate(method, base, splits, args.steps, args.warmup), 1)
        row["engine_overhead"] = round(1 - row["images_per_s_engine"] / row["images_per_s_bare"], 3)
        if row["gflops_achieved"]:
            row["fraction_of_matmul_peak"] = round(row["gflops_achieved"] / peak, 3)
        rows.append(row)
        s = row["share"]
        print(f"{method:8s} bare {row['images_per_s_bare']:7.1f} img/s, engine {row['images_per_s_engine']:7.1f} "
              f"({row['engine_overhead']:+.1%} framework); views {s['views']:.0%}, fwd+loss {s['forward_loss']:.0%}, "
              f"bwd {s['backward']:.0%}, optim {s['optimizer']:.0%}, after {s['after_step']:.0%}; backbone alone "
              f"{row['backbone_share']:.0%} of the step; {row['gflops_achieved']} GFLOP/s = "
              f"{row.get('fraction_of_matmul_peak', float('nan')):.0%} of the matmul rate {peak:.0f}", flush=True)
    if args.save:
        out = RESULTS / f"profile_step_{args.backbone}_{args.crop}px.json"
        out.write_text(json.dumps({"command": "python benchmarks/profile_step.py " + " ".join(argv or sys.argv[1:]),
                                   "matmul_gflops": round(peak, 1), "threads": torch.get_num_threads(),
                                   "date": datetime.now().isoformat(timespec="seconds"), "environment": environment(),
                                   "rows": rows}, indent=2))
        print(f"saved {out}")
    return 0


def compare_options(args, base: list[str], splits: DatasetSplits, argv: list[str] | None) -> int:
    rows = []
    for method in args.methods:
        mine = [time_option(method, base, splits, args.steps, args.warmup, o) for o in args.options or list(OPTIONS)]
        ref = next((r["seconds_per_step"] for r in mine if r["option"] == "eager"), None)
        for row in mine:
            row["speedup_vs_eager"] = round(ref / row["seconds_per_step"], 3) if ref else None
            rows.append(row)
            print(f"{method:8s} {row['option']:14s} {row['seconds_per_step']:.3f} s/step "
                  f"({row['speedup_vs_eager'] or float('nan'):.2f}x eager; first step {row['first_step_seconds']:.1f} s)",
                  flush=True)
    if args.save:
        out = RESULTS / f"profile_step_options_{args.backbone}_{args.crop}px_b{args.batch}.json"
        old = json.loads(out.read_text()) if out.is_file() else {"rows": []}
        stamp = {"command": "python benchmarks/profile_step.py " + " ".join(argv or sys.argv[1:]),
                 "threads": torch.get_num_threads(), "date": datetime.now().isoformat(timespec="seconds"),
                 "environment": environment()}
        for row in rows:  # each row carries its own run; a rerun replaces the rows it timed again
            row.update(timed=stamp["date"], command=stamp["command"])
        done = {(r["method"], r["option"]) for r in rows}
        kept = [r for r in old["rows"] if (r["method"], r["option"]) not in done]
        out.write_text(json.dumps({**stamp, "rows": kept + rows}, indent=2))
        print(f"saved {out} ({len(kept)} earlier rows kept)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
