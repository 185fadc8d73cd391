"""Which small backbone and recipe learn most per CPU second? kNN against training seconds.

    python benchmarks/cpu_budget.py                     # every candidate not yet in the results file
    python benchmarks/cpu_budget.py --only conv28-b256   # one candidate
    python benchmarks/cpu_budget.py --plot-only          # redraw the figure from the results file
    python benchmarks/cpu_budget.py --retime             # quiet seconds per step of every finished candidate
    python benchmarks/cpu_budget.py --retime --only a b  # ... of these (an earlier timing moves to earlier_timings)
    python benchmarks/cpu_budget.py --retime --timed-steps 100   # steadier on a VM whose speed drifts

Each candidate is SimCLR on Fashion-MNIST (all 60,000 training images) with a set of overrides
(backbone, width, crop size, crop range, batch, learning rate, epochs). After every epoch the
kNN monitor (k=200, T=0.1, the CPU preset's protocol) scores the backbone on a fixed,
class-balanced 10,000-image bank and 5,000 test images, and the script records the training
seconds so far: the time from each epoch's first step to its last, so the monitor's own time is
not counted. The raw-pixel kNN on the same bank and test images is the line to beat.

The seconds recorded during a candidate's run count whatever else ran on the cores meanwhile;
``--retime`` measures each finished candidate's seconds per training step alone (a short run of
the same config, after warm-up steps) and the figure's x axis is then epochs x steps per epoch x
those quiet seconds: the time the candidate takes on an idle machine.

Results are appended to ``benchmarks/results/cpu_budget.json`` one candidate at a time (a stopped
run loses at most the candidate in progress); the figure goes to
``benchmarks/results/cpu_budget.png``. Time it alone: two jobs on two cores halve each other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relssl.config import resolve_recipe  # noqa: E402
from relssl.config import load_config  # noqa: E402
from relssl.engine import pretrain  # noqa: E402
from relssl.config import load_data
from relssl.engine.rundir import environment  # noqa: E402
from relssl.metrics.knn import knn_accuracy, pixel_features_pair  # noqa: E402
from steptime import seconds_per_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BANK, TEST = 10000, 5000

# the common part: all 60k images, kNN every epoch on fixed subsets, no label-free probe
BASE = ["trainer.accelerator=cpu", "backbone.bn_splits=1", f"data.bank_subset={BANK}", f"data.test_subset={TEST}",
        "trainer.knn_every=1", "trainer.knn_at_start=true", "trainer.monitor_subset=0", "trainer.progress_bar=false",
        "trainer.log_every_n_steps=50", "trainer.diagnose_every=0", "optim.warmup_epochs=1"]


def candidate(backbone: str, lr: float, *extra: str, crop: int | None = 28, epochs: int = 8) -> list[str]:
    """A candidate's overrides: SimCLR with MoCo v2's views, batch 256, the given net, lr and extras."""
    size = [f"data.crop_size={crop}"] if crop else []
    return [f"backbone.name={backbone}", *size, "optim.batch_size=256", f"optim.lr={lr}", f"optim.epochs={epochs}",
            "views=[strong,strong]", *extra]


NO_BLUR = "augment.strong.blur_p=0"
HALF = "backbone.kwargs={widths: [16, 32, 64, 128]}"
DEMO_WARMUP = "optim.warmup_epochs=0.5"
# name: (overrides, note)
CANDIDATES = {
    "conv28-b256": (candidate("convnet", 0.1),
                    "convnet 32-256, native 28-px crops, MoCo v2 aug+ (crop 0.2-1, blur), batch 256, lr 0.1"),
    "conv28-noblur": (candidate("convnet", 0.1, NO_BLUR),
                      "as conv28-b256 without Gaussian blur (sigma up to 2 px wipes out a 28-px garment's detail)"),
    "grid28-b256": (candidate("convnet_grid", 0.1),
                    "as conv28-b256 with a 2x2 feature grid instead of global average pooling (1024-d features)"),
    "grid28-b256-lr03": (candidate("convnet_grid", 0.3), "grid28-b256 with lr 0.3"),
    "conv28-noblur-lr03": (candidate("convnet", 0.3, NO_BLUR), "no blur, lr 0.3"),
    "conv28-noblur-s35": (candidate("convnet", 0.1, NO_BLUR, "augment.strong.crop_scale=[0.35,1.0]"),
                          "no blur, crop area 0.35-1"),
    "tiny28-noblur": (candidate("convnet_tiny", 0.1, NO_BLUR, epochs=20),
                      "the tiny conv net (8-64), no blur: more epochs in the same time"),
    "conv32-b256": (candidate("convnet", 0.1, crop=None, epochs=6),
                    "the demo's recipe on all images: convnet, 32-px crops (images upscaled), blur, lr 0.1"),
    # the demo's budget: a few epochs, warm-up half an epoch, cosine to the end of the last
    "demo-grid-e3": (candidate("convnet_grid", 0.3, DEMO_WARMUP, epochs=3),
                     "convnet_grid (32-256), lr 0.3, 3 epochs, warm-up 0.5 epoch: the CPU demo until 2026-12-05"),
    "demo-half-e3": (candidate("convnet_grid", 0.3, HALF, DEMO_WARMUP, epochs=3),
                     "convnet_grid at half width (16-128, 512-d features), lr 0.3, 3 epochs, warm-up 0.5 epoch"),
    "demo-half-e5": (candidate("convnet_grid", 0.3, HALF, DEMO_WARMUP, epochs=5),
                     "demo-half-e3 for 5 epochs"),
    # the budget's recipe at half width: as good in the same epochs? better in the same minutes?
    "half28-e8": (candidate("convnet_grid", 0.3, HALF),
                  "grid28-b256-lr03 at half width (16-128, 512-d features), 8 epochs"),
    "half28-e24": (candidate("convnet_grid", 0.3, HALF, epochs=24),
                   "half28-e8 for 24 epochs: about the full-width net's 8-epoch training time"),
}


def pixel_line(cfg) -> float:
    splits = load_data(cfg)
    bank = splits.bank.subset(BANK, seed=cfg.seed)
    test = splits.test.subset(TEST, seed=cfg.seed)
    fb, ft = pixel_features_pair(bank.images, test.images)
    return knn_accuracy(fb, bank.labels, ft, test.labels, splits.info.num_classes)["top1"]


class EpochClock(L.Callback):
    """Training seconds per epoch: from the epoch's first step to the end of its last (no monitor)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = self._last = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(self._last - self._start)


def load(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"benchmark": "cpu_budget", "dataset": "fashion_mnist", "method": "simclr", "bank": BANK, "test": TEST,
            "command": "python benchmarks/cpu_budget.py", "runs": {}}


def run_candidate(name: str, out_dir: Path) -> dict:
    overrides, note = CANDIDATES[name]
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"), BASE + overrides + [f"output_dir={out_dir}"])
    clock = EpochClock()
    res = pretrain(cfg, quiet=True, extra_callbacks=[clock])
    elapsed, curve = 0.0, []
    for secs, hist in zip(clock.seconds, res["knn_history"]):
        elapsed += secs
        curve.append({"epoch": hist["epoch"], "train_seconds": round(elapsed, 1), "knn_top1": hist["top1"]})
    return {"overrides": overrides, "note": note, "knn_init_top1": res["knn_init_top1"], "curve": curve,
            "knn_last_top1": res["knn_last_top1"], "train_seconds": round(elapsed, 1),
            "wall_seconds": res["wall_seconds"], "run_dir": res["run_dir"], "channels_last": res["channels_last"],
            "date": datetime.now().isoformat(timespec="seconds"), "environment": environment()}


def retime(name: str, out_dir: Path, warmup: int = 5, steps: int = 30) -> tuple[float, bool]:
    """Quiet seconds per training step of candidate ``name`` (a short run of its config), and whether
    the step ran in channels_last (the engine's default layout, which changed on 2026-12-05)."""
    overrides, _ = CANDIDATES[name]
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"), BASE + overrides + [f"output_dir={out_dir}"])
    return seconds_per_step(cfg, warmup=warmup, steps=steps)[0], bool(cfg.backbone.channels_last)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in data["runs"].items():
        key = "quiet_train_seconds" if "quiet_seconds_per_step" in run else "train_seconds"
        xs = [0.0] + [p[key] / 60 for p in run["curve"]]
        ys = [run["knn_init_top1"]] + [p["knn_top1"] for p in run["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    if data.get("pixels_top1") is not None:
        ax.axhline(data["pixels_top1"], color="k", ls="--", lw=1, label=f"raw pixels {data['pixels_top1']:.1f}%")
        ax.axhline(data["pixels_top1"] + 3, color="k", ls=":", lw=1, label="raw pixels + 3")
    ax.set_xlabel("training minutes alone on the 2-core CPU (monitor excluded)")
    ax.set_ylabel(f"kNN top-1 % (bank {data['bank']}, test {data['test']})")
    ax.set_title("SimCLR on Fashion-MNIST: kNN per CPU minute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(CANDIDATES))
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_budget.json")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/cpu_budget"))
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--retime", action="store_true")
    ap.add_argument("--timed-steps", type=int, default=30,
                    help="--retime: steps timed (default 30; on a VM whose speed drifts, 100 gives steadier numbers)")
    args = ap.parse_args(argv)
    data = load(args.out)
    if args.retime:
        for name, run in data["runs"].items():
            if args.only and name not in args.only:
                continue
            sps, channels_last = retime(name, args.runs_dir / "retime", steps=args.timed_steps)
            steps_per_epoch = 60000 // int(next(o.split("=")[1] for o in run["overrides"] if o.startswith("optim.batch_size=")))
            if "quiet_seconds_per_step" in run:  # the timing it replaces stays in the file
                run.setdefault("earlier_timings", []).append(
                    {"quiet_seconds_per_step": run["quiet_seconds_per_step"], **run.get("quiet_timed_on", {})})
            run["quiet_seconds_per_step"] = round(sps, 4)
            env = environment()  # every candidate of the figure timed on one machine: say which, when, in what layout
            run["quiet_timed_on"] = {"device": env.get("device"), "date": datetime.now().isoformat(timespec="seconds"),
                                     "channels_last": channels_last, "timed_steps": args.timed_steps}
            for point in run["curve"]:
                point["quiet_train_seconds"] = round(point["epoch"] * steps_per_epoch * sps, 1)
            print(f"cpu_budget: {name}: {sps:.3f} s per step alone ({steps_per_epoch} steps per epoch)", flush=True)
            args.out.write_text(json.dumps(data, indent=2))
    elif not args.plot_only:
        if data.get("pixels_top1") is None:
            cfg = load_config(resolve_recipe("fashion_mnist/simclr"), BASE + ["trainer.accelerator=cpu"])
            data["pixels_top1"] = pixel_line(cfg)
            args.out.write_text(json.dumps(data, indent=2))
        for name in args.only or list(CANDIDATES):
            if name in data["runs"]:
                print(f"cpu_budget: {name} already done, skipped", flush=True)
                continue
            print(f"cpu_budget: {name} ...", flush=True)
            data["runs"][name] = run_candidate(name, args.runs_dir)
            args.out.write_text(json.dumps(data, indent=2))  # appended run by run
            r = data["runs"][name]
            print(f"cpu_budget: {name}: kNN {r['knn_last_top1']:.2f}% after {r['train_seconds']:.0f} s "
                  f"(pixels {data['pixels_top1']:.2f}%)", flush=True)
    plot(data, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
