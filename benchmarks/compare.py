"""Every method and plug-in combination at equal budget on Fashion-MNIST, over seeds (issue #10).

    python benchmarks/compare.py --preset gpu                          # all combinations x seeds 0 1 2
    python benchmarks/compare.py --preset gpu --seeds 1 --time-budget 540   # one seed, stop before 9 min
    python benchmarks/compare.py --preset gpu --jobs 2                 # two runs at a time on one GPU
    python benchmarks/compare.py --preset long                         # MoCo v2 + the best of the gpu results
    python benchmarks/compare.py --preset cpu-smoke --methods simclr mocov2+ascl   # seconds a run on a CPU
    python benchmarks/compare.py --preset gpu --table-only             # re-render table and plots
    python benchmarks/compare.py --preset gpu --dry-run                # build and check every config, run nothing
    python benchmarks/compare.py --preset cpu-budget --time-steps      # each step timed alone (idle machine)
    python benchmarks/compare.py --preset cpu-budget --table-only --docs docs/comparison.md README.md  # and their blocks

Each combination starts from its packaged Fashion-MNIST recipe (``configs/fashion_mnist/<name>.yaml``),
then the preset's shared budget overrides it: backbone, crop / evaluation size, batch, epochs,
warm-up, optimizer type, momentum, weight decay, lr schedule and lr scaling rule, kNN monitor,
data subsets. What stays per method: the method's own options (heads, temperatures, queues,
momenta), its views and augmentation, and its base learning rate (scaled by batch / 256 like
every other). docs/comparison.md explains why.

Per run: pretraining through the Python API with the kNN monitor (the learning curve), then,
on the frozen backbone of the LAST epoch, weighted kNN (k=200, T=0.1) and a linear probe with a
fixed recipe on features computed once; both on the preset's evaluation split, the same for
every method. Every finished run is appended to the results JSON at once (read, add, write a
temporary file, rename), so a session cut short keeps what it finished and a rerun skips it.
A run directory whose pretraining was cut short is resumed (``relssl pretrain --resume``).

Then the table (mean +- sample standard deviation over seeds, last epoch of everything) is printed
and written beside the JSON (``.md``) with two plots: accuracy against pretraining time (one point
per combination) and kNN top-1 against epoch (every combination in one plot).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from relssl.config import CONFIG_DIR, resolve_recipe  # noqa: E402
from relssl.config import TrainerConfig, apply_overrides, config_from_dict, read_yaml  # noqa: E402
from relssl.engine import pretrain  # noqa: E402
from relssl.config import eval_image_size, load_data  # noqa: E402
from relssl.engine.rundir import environment  # noqa: E402
from relssl.engine.setup import resolve_precision  # noqa: E402
from relssl.errors import ConfigError, RunInterrupted  # noqa: E402
from relssl.metrics.knn import extract_features, knn_accuracy  # noqa: E402
from relssl.evaluate.linear import LinearProbeConfig, linear_probe_features  # noqa: E402
from relssl.evaluate.export import export_backbone  # noqa: E402
from relssl.methods import METHODS  # noqa: E402
from relssl.methods.plugins import PLUGINS, hosts_of  # noqa: E402
from steptime import seconds_per_step  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
KNN_K, KNN_T = 200, 0.1
BASELINES = ("random_init", "pixels")  # evaluated like a run, without pretraining


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """The budget every combination shares (see docs/comparison.md, "Fairness")."""

    name: str
    backbone: str = "resnet18"
    bn_splits: int = 8
    crop_size: int = 32
    batch_size: int = 512
    epochs: int = 10
    warmup_epochs: float = 1.0
    subset: int | None = None  # pretraining images (None: all 60,000)
    monitor_bank: int | None = 10000  # kNN monitor (learning curve) bank; None: all
    monitor_test: int | None = None  # kNN monitor test images; None: all 10,000
    eval_train: int | None = None  # headline kNN bank = linear-probe train split; None: all
    eval_test: int | None = None  # headline test split; None: all
    knn_every: int = 1
    # images of the label-free monitor (RankMe, uniformity, alignment) beside kNN; 0 = kNN alone
    monitor_subset: int = 4096
    linear_epochs: int = 100
    log_every_n_steps: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    note: str = ""
    # one learning rate for every combination (None: each recipe's own, scaled by batch / 256)
    lr: float | None = None
    # extra overrides for every combination whose host method is the key (e.g. SimCLR's views)
    method_extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


PRESETS = {
    # ~1 min per run on an H100: MoCo v2 at the spine's ~15k img/s does 60,000 x 10 images in 40 s;
    # the heavier methods (symmetric losses, 4 views, BSIM's extra pass) take up to about twice that
    "gpu": Preset("gpu", note="ResNet-18, all 60,000 images, 10 epochs: about a minute per run on an H100"),
    "long": Preset("long", epochs=100, warmup_epochs=5.0, knn_every=5, seeds=(0,),
                   note="100 epochs for MoCo v2 and the best combination of the gpu preset"),
    # what a 2-core CPU compares in about an hour per 3 seeds: a tiny conv net, 20,000 images, 10 epochs
    "cpu": Preset("cpu", backbone="convnet_tiny", bn_splits=1, batch_size=256, epochs=10, warmup_epochs=1.0,
                  subset=20000, monitor_bank=2000, monitor_test=2000, eval_train=None, eval_test=None,
                  linear_epochs=30, knn_every=2, log_every_n_steps=5, seeds=(0, 1, 2),
                  monitor_subset=0,  # seeds 0 and 1 ran before the label-free monitor: keep wall times comparable
                  note="CPU scale: a tiny conv net, 20,000 images, 10 epochs; not the GPU comparison"),
    # the CPU budget chosen by measurement (benchmarks/cpu_budget.py, docs/comparison.md "A CPU budget
    # where self-supervision learns"): the conv net with a 2x2 feature grid at the native 28 px, all
    # 60,000 images, 8 epochs, lr 0.3 (SimCLR: +3.6 kNN points over raw pixels in about 18 minutes of
    # training on 2 idle cores), one lr for all;
    # SimCLR-hosted rows take MoCo v2's views (crop 0.2-1: 0.08 cuts too much of a 28-px garment in 8 epochs)
    "cpu-budget": Preset("cpu-budget", backbone="convnet_grid", bn_splits=1, crop_size=28, batch_size=256, epochs=8,
                         warmup_epochs=1.0, subset=None, monitor_bank=10000, monitor_test=5000, eval_train=None,
                         eval_test=None, linear_epochs=30, knn_every=2, log_every_n_steps=20, seeds=(0, 1, 2),
                         monitor_subset=0, lr=0.3, method_extra=(("simclr", ("views=[strong,strong]",)),),
                         note="CPU budget: convnet_grid at 28 px, all 60,000 images, 8 epochs, lr 0.3; about 20 min "
                              "of training per run on 2 cores"),
    "cpu-smoke": Preset("cpu-smoke", backbone="convnet_tiny", batch_size=128, epochs=2, warmup_epochs=0.0,
                        subset=2000, monitor_bank=1000, monitor_test=1000, eval_train=1000, eval_test=1000,
                        linear_epochs=10, log_every_n_steps=5, seeds=(0,),
                        note="smoke check only: a tiny conv net on 2,000 images; the numbers mean nothing"),
}


def preset_settings(p: Preset, linear_epochs: int) -> dict:
    """The shared settings recorded in the results file (all runs of a file share them)."""
    d = dataclasses.asdict(p)
    d.pop("seeds")
    d.pop("note")
    d["linear_epochs"] = linear_epochs
    d.update(dataset="fashion_mnist", optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4,
             lr_schedule="linear warm-up then cosine to 0, per step", lr_scaling="linear (recipe lr x batch / 256)",
             cifar_stem=True, maxpool=False, knn_k=KNN_K, knn_t=KNN_T,
             linear_recipe=probe_config(linear_epochs, 0).to_dict() | {"seed": "the run's seed"})
    if p.lr is not None:
        d["lr_scaling"] = f"none: lr {p.lr} for every combination"
    d["method_extra"] = {name: list(extra) for name, extra in p.method_extra}
    return d


def probe_config(epochs: int, seed: int) -> LinearProbeConfig:
    """The fixed linear-probe recipe: MSVQ's (cosine lr 1.0, SGD Nesterov 0.9, batch 256, no
    weight decay, un-normalised features computed once, no augmentation); only the epochs differ by preset."""
    return LinearProbeConfig(schedule="cosine", lr=1.0, epochs=epochs, batch_size=256, weight_decay=0.0,
                             augment=False, feature_norm="none", seed=seed, eval_every=1)


# ----------------------------------------------------------------------------- combinations


# Controls that separate a plug-in from the form of its host that its recipe brings along. ASCL's
# official code runs MoCo v2 with a weak key view at temperature t1 = 0.1, and BYOL in one direction
# (weak target view, no BN in the projector); the plain mocov2 / byol rows run their own recipes. Each
# control is the host in ASCL's form with ASCL's soft targets off (``relation: moco`` is plain InfoNCE
# at t1; BYOL without the plug-in regresses the one target), so "ASCL beats its host" can be told
# apart from "ASCL's form of the host beats the host". name: (method, plug-ins, recipe of, overrides)
CONTROLS = {
    "mocov2-ascl-form": ("mocov2", ("ascl",), "mocov2+ascl", ("plugins.ascl.relation=moco",)),
    "byol-ascl-form": ("byol", (), "byol+ascl", ("plugins={}",)),
}


def combinations() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, method, plug-ins): every method, then every plug-in on each of its hosts, in so far
    as a packaged Fashion-MNIST recipe exists for it (``configs/fashion_mnist/<method>[_<plugin>].yaml``:
    the recipes define the matrix, so a plug-in with no recipe of its own stays out), then the
    ``CONTROLS`` of the combinations present."""
    out = [(m, m, ()) for m in METHODS]
    for pname, cls in PLUGINS.items():
        out += [(f"{host}+{pname}", host, (pname,)) for host in hosts_of(cls)]
    out = [c for c in out if (CONFIG_DIR / (recipe_name(c[0]) + ".yaml")).is_file()]
    names = {c[0] for c in out}
    return out + [(name, method, plugins) for name, (method, plugins, base, _) in CONTROLS.items() if base in names]


def recipe_name(combo: str) -> str:
    """The packaged recipe a combination starts from (a control: its plug-in combination's)."""
    return "fashion_mnist/" + (CONTROLS[combo][2] if combo in CONTROLS else combo).replace("+", "_")


def recipe_label(combo: str) -> str:
    """The recipe as the records say it: a control's overrides after its recipe."""
    return " ".join((recipe_name(combo),) + (CONTROLS[combo][3] if combo in CONTROLS else ()))


def is_control(combo: str) -> bool:
    """A control row that isolates a plug-in from its host's form (``CONTROLS``)."""
    return combo in CONTROLS


def run_name(preset: str, combo: str, seed: int) -> str:
    return f"compare-{preset}-{combo.replace('+', '_')}-seed{seed}"


def shared_overrides(p: Preset, seed: int, accelerator: str) -> list[str]:
    """The preset's budget as ``key=value`` overrides on top of a method's recipe."""
    def v(x):
        return "null" if x is None else x

    # at least one images/s record per epoch, also on a small subset
    log_every = max(1, min(p.log_every_n_steps, (p.subset or 60000) // p.batch_size))

    ov = [
        f"seed={seed}",
        "data.dataset=fashion_mnist", "data.root=null", "data.image_size=null", "data.eval_size=null",
        f"data.crop_size={p.crop_size}", f"data.subset={v(p.subset)}",
        f"data.bank_subset={v(p.monitor_bank)}", f"data.test_subset={v(p.monitor_test)}",
        f"backbone.name={p.backbone}", "backbone.cifar_stem=true", "backbone.maxpool=false",
        f"backbone.bn_splits={p.bn_splits}", "backbone.weights=null",
        "optim.name=sgd", "optim.momentum=0.9", "optim.nesterov=false", "optim.weight_decay=0.0005",
        "optim.exclude_bn_bias=false", "optim.lr_scaling=linear", "optim.min_lr=0.0", "optim.max_steps=null",
        f"optim.batch_size={p.batch_size}", f"optim.epochs={p.epochs}", f"optim.warmup_epochs={p.warmup_epochs}",
        f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.num_nodes=1", "trainer.precision=auto",
        # the monitor's k: 200, or the whole bank when a small test preset has fewer images (said, not clamped)
        f"trainer.knn_every={p.knn_every}", f"trainer.knn_k={min(KNN_K, p.monitor_bank or KNN_K)}", f"trainer.knn_t={KNN_T}",
        "trainer.knn_at_start=true", "trainer.progress_bar=false", "trainer.checkpoint_every=1",
        "trainer.nan_policy=stop", f"trainer.log_every_n_steps={log_every}",
    ]
    if "monitor_subset" in {f.name for f in dataclasses.fields(TrainerConfig)}:
        ov.append(f"trainer.monitor_subset={p.monitor_subset}")
    if "diagnose_every" in {f.name for f in dataclasses.fields(TrainerConfig)}:
        ov.append("trainer.diagnose_every=0")  # training-time diagnostics cost time unequally: off
    return ov


def method_overrides(method: str, p: Preset) -> list[str]:
    """Per-method values that the budget changes: WCL's weak-augmentation epochs equal its lr
    warm-up epochs (as in its recipe and the official code)."""
    out = [f"method.weak_aug_epochs={int(round(p.warmup_epochs))}"] if method == "wcl" else []
    if p.lr is not None:  # one rate for all, not rescaled by the batch
        out += [f"optim.lr={p.lr}", "optim.lr_scaling=none"]
    return out + [o for name, extra in p.method_extra if name == method for o in extra]


def build_config(combo: str, method: str, plugins: tuple[str, ...], p: Preset, seed: int, runs_dir: Path,
                 accelerator: str, prefix: str = "compare"):
    """``prefix``: of the run name (the step timing's short runs use their own)."""
    raw = read_yaml(resolve_recipe(recipe_name(combo)))
    control = list(CONTROLS[combo][3]) if combo in CONTROLS else []
    raw = apply_overrides(raw, control + shared_overrides(p, seed, accelerator) + method_overrides(method, p))
    raw["name"] = run_name(p.name, combo, seed).replace("compare-", prefix + "-", 1)
    raw["output_dir"] = str(runs_dir)
    cfg = config_from_dict(raw)
    if cfg.method["name"] != method or tuple(cfg.plugins) != plugins:
        raise ConfigError(f"recipe {recipe_label(combo)} is {cfg.method['name']} with plug-ins {list(cfg.plugins)}, "
                          f"not {combo}")
    return cfg


def config_hash(cfg) -> str:
    d = cfg.to_dict()
    for key in ("seed", "name", "output_dir"):
        d.pop(key, None)
    d["trainer"].pop("accelerator", None)
    # what the online monitor measures does not change the weights (its draws use their own generator):
    # keys added after results were recorded must not make their configs look different
    for key in ("monitor", "monitor_subset"):
        d["trainer"].pop(key, None)
    # nor where the metrics are logged
    for key in ("loggers", "experiment", "mlflow_uri", "wandb_offline"):
        d["trainer"].pop(key, None)
    if d["optim"].get("global_batch_size") is None:  # came later too; unset, the batch is optim.batch_size
        d["optim"].pop("global_batch_size", None)
    # backbone.kwargs / weights and optim.betas / grad_clip came later: at their defaults they hash as before
    # (the weights file under its former key name, backbone.pretrained)
    b, o = d["backbone"], d["optim"]
    if not b.get("kwargs"):
        b.pop("kwargs", None)
    b["pretrained"] = b.pop("weights", None) or b.get("pretrained")
    if o.get("betas") == [0.9, 0.999]:
        o.pop("betas")
    if o.get("grad_clip") is None:
        o.pop("grad_clip", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- results file


def git_state() -> dict:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks/compare.py"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        if head.returncode:
            return {}
        return {"commit": head.stdout.strip(), "src_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def machine() -> dict:
    env = environment()
    env.update(platform=platform.platform(), cuda=torch.version.cuda if torch.cuda.is_available() else None,
               gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
               torch_threads=torch.get_num_threads())
    return env


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``path``'s directory while a read-modify-write of the file runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def claimed(runs_dir: Path, name: str):
    """Yields True while this process holds run ``name`` (a non-blocking exclusive lock on
    ``runs_dir/.claims/<name>.lock``), False when another process holds it. Workers of one comparison
    (``--jobs``) claim a run before starting it; the lock goes with the process, so a killed worker
    leaves no stale claim."""
    try:
        import fcntl
    except ImportError:  # no flock (not POSIX): one process at a time, as without --jobs
        yield True
        return
    d = runs_dir / ".claims"
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def read_results(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); move it away or pass another --out") from err


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # the usual mode of a new file, not mkstemp's 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def new_results(preset: Preset, settings: dict) -> dict:
    return {"benchmark": "compare", "dataset": "fashion_mnist", "preset": preset.name, "note": preset.note,
            "settings": settings, "protocol": PROTOCOL, "invocations": [], "runs": [], "failures": []}


def update_results(path: Path, fn) -> dict:
    """Read the file (or nothing), apply ``fn(data) -> data``, write atomically; under a lock."""
    with locked(path):
        data = read_results(path)
        data = fn(data)
        write_atomic(path, json.dumps(data, indent=1, default=_json_default) + "\n")
    return data


def _json_default(x):
    if isinstance(x, (torch.Tensor,)):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def check_settings(data: dict | None, settings: dict, path: Path) -> None:
    if data is None:
        return
    old = data.get("settings", {})
    # what the monitor measures is not part of the budget (config_hash leaves it out too)
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k) and k != "monitor_subset")
    if diff:
        changes = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"{path} was made with other shared settings ({changes}); numbers from different budgets "
                          "must not share a table: pass another --out")


def done_keys(data: dict | None) -> dict[tuple[str, int], dict]:
    return {(r["combo"], int(r["seed"])): r for r in (data or {}).get("runs", [])}


PROTOCOL = {
    "headline": "last-epoch accuracy of every seed (mean and sample standard deviation); never the best epoch",
    "knn": f"weighted kNN (k={KNN_K}, T={KNN_T}) of L2-normalised frozen backbone features of the last pretraining "
           "epoch; bank = the evaluation train split, queries = the evaluation test split",
    "linear": "linear probe on frozen, un-normalised features of the last pretraining epoch (computed once, no "
              "augmentation): Linear(D, 10) N(0, 0.01^2), SGD Nesterov 0.9, lr 1.0 cosine per step, batch 256, "
              "no weight decay; top-1 of its last epoch",
    "knn_history": "the kNN monitor during pretraining (monitor bank / test subsets, see settings), for the "
                   "learning curves only",
    "optimistic": "knn_monitor_best_top1 and linear_best_top1 select the epoch on the test set; recorded, never "
                  "the headline",
    "img_s": "median of the images/s logged during pretraining (each source image once, not each view); "
             "img_s_overall = images trained / training time (epochs alone: monitor and checkpoints excluded)",
    "peak_memory": "cuda: torch.cuda.max_memory_allocated over pretraining; cpu: the process's max RSS so far "
                   "(getrusage, cumulative over the runs of one invocation)",
}


# ----------------------------------------------------------------------------- one run


class EpochTimer(L.Callback):
    """Training time alone: the sum over epochs of (epoch end - epoch start), before the kNN monitor
    and the checkpoint writes (callbacks run in list order; ``pretrain`` puts extra ones first)."""

    def __init__(self) -> None:
        self.seconds, self.images, self._t0, self._step0 = 0.0, 0, None, 0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._t0 is None:
            return
        self._sync(pl_module)
        self.seconds += time.perf_counter() - self._t0
        self.images += (trainer.global_step - self._step0) * pl_module.cfg.optim.batch_size * trainer.world_size
        self._t0 = None


def peak_memory_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20), "cpu_process_max_rss"


def median_img_s(run_dir: Path) -> float | None:
    from relssl.evaluate.plots import read_metrics_csv

    try:
        rows = read_metrics_csv(run_dir / "metrics.csv")
    except Exception:  # noqa: BLE001 - the rate is informative; a missing file leaves it empty
        return None
    vals = [r["img_s"] for r in rows if "img_s" in r and math.isfinite(r["img_s"])]
    return float(statistics.median(vals)) if vals else None


def _r(x, digits: int = 4):
    return None if x is None else round(float(x), digits)


def eval_features(backbone, images, size, info, device) -> torch.Tensor:
    # NCHW weights and images on the CPU whatever layout the run trained in (relssl's own evaluation
    # follows the run's): every seed of a comparison evaluated alike, as its first seeds were
    channels_last = device.type == "cuda"
    backbone.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return extract_features(backbone, images, size=size, mean=info.mean, std=info.std, device=device,
                            channels_last=channels_last, normalize=False)


def knn_eval(train_x, train_y, test_x, test_y, num_classes: int, device) -> dict:
    """The headline kNN (k=KNN_K, T=KNN_T, cosine) on fixed, un-normalised features."""
    return knn_accuracy(F.normalize(train_x.to(device), dim=1), train_y.to(device).long(),
                        F.normalize(test_x.to(device), dim=1), test_y.to(device).long(), num_classes, k=KNN_K, t=KNN_T)


def evaluate(train_x, train_y, test_x, test_y, num_classes: int, linear_epochs: int, seed: int, device) -> dict:
    """Headline kNN and linear probe on fixed features; ``train_x`` / ``test_x`` un-normalised."""
    t0 = time.perf_counter()
    train_y, test_y = train_y.to(device).long(), test_y.to(device).long()
    knn = knn_eval(train_x, train_y, test_x, test_y, num_classes, device)
    probe = linear_probe_features(train_x, train_y, test_x, test_y, num_classes, probe_config(linear_epochs, seed),
                                  device=device)
    return {"knn_last_top1": _r(knn["top1"]), "knn_last_top5": _r(knn["top5"]),
            "linear_last_top1": _r(probe["top1"]), "linear_last_top5": _r(probe["top5"]),
            "linear_best_top1": _r(probe["best_top1"]), "linear_best_epoch": probe["best_epoch"],
            "linear_seconds": round(time.perf_counter() - t0, 2)}


def eval_splits(splits, p: Preset, seed: int):
    """The evaluation split: class-balanced subsets seeded by the run's seed (all of it in the gpu presets)."""
    train = splits.bank.subset(p.eval_train, seed=seed).materialize()
    test = splits.test.subset(p.eval_test, seed=seed).materialize()
    return train, test


def run_one(combo: str, method: str, plugins: tuple[str, ...], seed: int, p: Preset, splits, runs_dir: Path,
            accelerator: str, linear_epochs: int, device: torch.device, keep_checkpoints: bool) -> dict:
    cfg = build_config(combo, method, plugins, p, seed, runs_dir, accelerator)
    chash = config_hash(cfg)
    run_dir = runs_dir / cfg.name
    resumed, results = False, None
    if run_dir.exists():
        old = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else None
        if old is None:
            raise ConfigError(f"{run_dir} exists and was not made by relssl pretrain; move it away or pass --runs-dir")
        import yaml

        old_hash = config_hash(config_from_dict(yaml.safe_load(old)))
        if old_hash != chash:
            raise ConfigError(f"{run_dir} holds a run of another config (hash {old_hash}, now {chash}); "
                              "remove it or pass another --runs-dir")
        done = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else None
        if done is not None and done.get("stopped"):
            raise ConfigError(f"{run_dir} stopped ({done['stopped']}); remove it to run it again")
        if done is not None and done.get("finished", True) and (run_dir / "checkpoints" / "last.ckpt").is_file():
            results = done  # (results.json of an interrupted run says finished: false: resumed below)
            print(f"  {run_dir.name}: pretraining already finished, evaluating it", flush=True)
        elif (run_dir / "checkpoints" / "last.ckpt").is_file():
            print(f"  {run_dir.name}: resuming the interrupted pretraining", flush=True)
            resumed = True
        else:
            shutil.rmtree(run_dir)  # ours (same name and config), cut before its first checkpoint
    t_start = time.perf_counter()
    peak_memory_start(device)
    timer = EpochTimer()
    pretrained_now = results is None
    if results is None:
        results = pretrain(cfg, splits=splits, resume=run_dir if resumed else None, quiet=True,
                           extra_callbacks=[timer])
    mem, mem_kind = peak_memory(device)
    run_dir = Path(results["run_dir"])
    monitor_s = sum(h.get("seconds", 0.0) for h in results["knn_history"] + (results.get("rankme_history") or []))

    # evaluation of the last epoch's backbone, the same split and recipe for every method
    t0 = time.perf_counter()
    from relssl.evaluate import prepare

    setup = prepare(run_dir, splits=splits, device=device)
    train, test = eval_splits(splits, p, seed)
    size = eval_image_size(setup.cfg, splits.info)
    ftr = eval_features(setup.backbone, train.images, size, splits.info, device)
    fte = eval_features(setup.backbone, test.images, size, splits.info, device)
    ev = evaluate(ftr, train.labels, fte, test.labels, splits.info.num_classes, linear_epochs, seed, device)
    eval_s = time.perf_counter() - t0
    del setup, ftr, fte
    # the evaluated backbone, kept when the checkpoints go (a few MB at CPU scale): benchmarks/zoo.py
    # publishes chosen ones, and the suite checks that they give the number recorded here
    weights = run_dir / "backbone.safetensors"
    export_backbone(run_dir, weights, splits=splits)
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    hist = [{"epoch": h["epoch"], "top1": _r(h["top1"]), "top5": _r(h["top5"])} for h in results["knn_history"]]
    return {
        "combo": combo, "method": method, "plugins": list(plugins), "seed": seed, "recipe": recipe_label(combo),
        "config_hash": chash, "lr": cfg.optim.lr, "effective_lr": cfg.optim.lr * cfg.optim.batch_size / 256,
        "views": list(cfg.views) if cfg.views else None,
        "epochs": results["epochs_done"], "steps": results["steps"], "pretrain_images": len(
            splits.pretrain.subset(cfg.data.subset, seed=seed)),
        "eval_train": len(train), "eval_test": len(test), "eval_size": size,
        **ev,
        "knn_init_top1": _r(results.get("knn_init_top1")),
        "knn_monitor_last_top1": _r(results.get("knn_last_top1")),
        "knn_monitor_best_top1": _r(results.get("knn_best_top1")),
        "knn_history": hist,
        # label-free monitor of the backbone (RankMe: effective rank of its features), when it ran
        "rankme_init": _r(results.get("rankme_init")), "rankme_last": _r(results.get("rankme_last")),
        "img_s": _r(median_img_s(run_dir), 1),
        "img_s_overall": round(timer.images / timer.seconds, 1) if timer.seconds else None,
        "peak_mem_gib": round(mem, 3) if pretrained_now else None, "peak_mem_kind": mem_kind,
        "pretrain_wall_s": results["wall_seconds"], "knn_monitor_s": round(monitor_s, 2),
        "train_s": round(timer.seconds, 2) if timer.seconds and not resumed else None,
        "eval_wall_s": round(eval_s, 2),
        "total_s": round(time.perf_counter() - t_start, 2), "resumed": resumed,
        "run_dir": str(run_dir), "device": device.type,
        "backbone_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "precision": resolve_precision(cfg, "gpu" if device.type == "cuda" else "cpu"),
        # the layout it trained in (runs recorded before relssl used NHWC on the CPU lack the key: NCHW)
        "channels_last": results.get("channels_last", device.type == "cuda"),
        "environment": results.get("environment") or environment(),
    }


def run_baseline(name: str, seed: int, p: Preset, splits, linear_epochs: int, device: torch.device) -> dict:
    """No pretraining: the randomly initialised backbone (seeded by ``seed``) or raw pixels."""
    from relssl.nn import build_backbone

    t0 = time.perf_counter()
    train, test = eval_splits(splits, p, seed)
    info = splits.info
    if name == "random_init":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net, _ = build_backbone(p.backbone, in_channels=info.channels, cifar_stem=True, maxpool=False,
                                    bn_splits=p.bn_splits)
        net.to(device).eval()
        size = p.crop_size
        ftr = eval_features(net, train.images, size, info, device)
        fte = eval_features(net, test.images, size, info, device)
    else:  # raw pixels at the native 28 px, centred with the train split's mean
        xtr = train.images.flatten(1).float() / 255.0
        xte = test.images.flatten(1).float() / 255.0
        mu = xtr.mean(dim=0, keepdim=True)
        ftr, fte = (xtr - mu).to(device), (xte - mu).to(device)
    ev = evaluate(ftr, train.labels, fte, test.labels, info.num_classes, linear_epochs, seed, device)
    return {"combo": name, "method": name, "plugins": [], "seed": seed, "recipe": None,
            "config_hash": f"baseline-{p.backbone if name == 'random_init' else 'pixels'}",
            "eval_train": len(train), "eval_test": len(test), **ev, "knn_history": [],
            "eval_wall_s": round(time.perf_counter() - t0, 2), "total_s": round(time.perf_counter() - t0, 2),
            "device": device.type, "environment": environment()}


def share_cores(workers: int) -> int:
    """This process's share of the CPU when ``workers`` processes run at once (``--jobs N`` on a CPU):
    cores // N torch threads, also for the processes it starts; returns the thread count. N pools of
    all the cores would fight over them: on 2 cores two 1-thread runs train 1.20x (SimCLR) to 1.23x
    (MoCo v2) the steps per second of one 2-thread run (benchmarks/cpu_sharing.py,
    results/cpu_sharing_cpu-budget_*.json)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return threads


def time_steps(combo: str, method: str, plugins: tuple[str, ...], p: Preset, splits, runs_dir: Path,
               accelerator: str, warmup: int = 5, steps: int = 30) -> dict:
    """Seconds per training step of ``combo`` under preset ``p``, measured now (``steptime.py``: a
    short run of the same config, seed 0, monitor off). The runs' own clocks count whatever else
    shared the cores; this is the step on the machine as it is now, with the share of the CPUs that
    other processes used meanwhile."""
    cfg = build_config(combo, method, plugins, p, 0, runs_dir, accelerator, prefix="steptime")
    sps, others = seconds_per_step(cfg, splits, warmup=warmup, steps=steps)
    batch = cfg.optim.batch_size
    return {"seconds_per_step": round(sps, 4), "img_s": round(batch / sps, 1), "batch_size": batch,
            "warmup_steps": warmup, "timed_steps": steps, "channels_last": bool(cfg.backbone.channels_last),
            "others_cpu_share": None if others is None else round(others, 3),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}


# ----------------------------------------------------------------------------- table and plots


def _mean_sd(vals: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _fmt(m, sd, digits=2) -> str:
    if m is None:
        return "-"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def aggregate(data: dict) -> list[dict]:
    """One row per combination (in the canonical order, baselines last): means and spreads over seeds."""
    order = [c[0] for c in combinations()] + list(BASELINES)
    by = {}
    for r in data.get("runs", []):
        by.setdefault(r["combo"], []).append(r)
    rows = []
    for combo in sorted(by, key=lambda c: (order.index(c) if c in order else len(order), c)):
        runs = sorted(by[combo], key=lambda r: r["seed"])
        row = {"combo": combo, "baseline": combo in BASELINES, "n": len(runs), "seeds": [r["seed"] for r in runs],
               "mixed_configs": len({r.get("config_hash") for r in runs}) > 1}
        for key in ("knn_last_top1", "linear_last_top1", "img_s", "peak_mem_gib", "pretrain_wall_s", "train_s",
                    "eval_wall_s"):
            row[key] = _mean_sd([r.get(key) for r in runs])
        row["peak_mem_kind"] = runs[-1].get("peak_mem_kind")
        row["per_seed"] = {int(r["seed"]): {k: r.get(k) for k, _ in METRICS} for r in runs}
        row["resumed"] = any(r.get("resumed") for r in runs)
        row["shared"] = any((r.get("concurrent_jobs") or 1) > 1 for r in runs)
        # learning curve: mean over the seeds that logged each epoch; the random-init point at epoch 0
        curve: dict[int, list[float]] = {}
        for r in runs:
            if r.get("knn_init_top1") is not None:
                curve.setdefault(0, []).append(r["knn_init_top1"])
            for h in r.get("knn_history", []):
                curve.setdefault(int(h["epoch"]), []).append(h["top1"])
        row["curve"] = sorted((e, statistics.fmean(v)) for e, v in curve.items())
        # the step timed alone (--time-steps), and the pretraining it implies: steps done x that time
        alone = (data.get("steptime") or {}).get(combo)
        steps = _mean_sd([r.get("steps") for r in runs])[0]
        row["img_s_alone"] = alone["img_s"] if alone else None
        row["train_min_alone"] = steps * alone["seconds_per_step"] / 60 if alone and steps else None
        rows.append(row)
    return rows


def _secs(x) -> str:
    return "-" if x is None else f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _relpath(target: Path, start: Path) -> str:
    """A link from ``start`` to ``target`` when both lie in the repository, else the repository path."""
    try:
        start.resolve().relative_to(ROOT)
        return os.path.relpath(target, start)
    except ValueError:
        return str(target.relative_to(ROOT))


def render_table(data: dict, out_json: Path) -> str:
    s = data.get("settings", {})
    rows = aggregate(data)
    here = out_json.parent
    cmd = data.get("command") or f"python benchmarks/compare.py --preset {data.get('preset')}"
    mem_kinds = {r["peak_mem_kind"] for r in rows if r["peak_mem_kind"]}
    mem_head = ("peak GPU mem GiB" if mem_kinds == {"cuda_max_allocated"}
                else "peak RSS GiB (process)" if mem_kinds == {"cpu_process_max_rss"} else "peak mem GiB")
    ntrain = s.get("subset") or 60000
    lines = [
        f"### Fashion-MNIST, every method at equal budget (preset `{data.get('preset')}`)",
        "",
        f"Made by [`{cmd}`]({_relpath(ROOT / 'benchmarks' / 'compare.py', here)}); raw results: "
        f"[`{out_json.name}`]({out_json.name}); rules: "
        f"[docs/comparison.md]({_relpath(ROOT / 'docs' / 'comparison.md', here)}).",
        "",
        f"Shared budget: {s.get('backbone')} (CIFAR stem, SplitBN {s.get('bn_splits')}), {s.get('crop_size')}x"
        f"{s.get('crop_size')} crops, {ntrain:,} pretraining images, batch {s.get('batch_size')}, "
        f"{s.get('epochs')} epochs ({s.get('warmup_epochs', 0):g} warm-up + cosine), SGD momentum 0.9, weight decay "
        f"5e-4, lr = the recipe's lr x batch / 256; each method keeps its own heads, temperatures, queues and views.",
        "",
        f"| method | seeds | kNN top-1 % (last epoch) | linear top-1 % (last epoch) | images/s | images/s alone "
        f"| training min alone | {mem_head} | pretrain s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = (r["combo"] + (" (no pretraining)" if r["baseline"] else "")
                + (" (label oracle: trains on labels)" if is_oracle(r["combo"]) else "")
                + (" (control: ASCL's form of the host, ASCL off)" if is_control(r["combo"]) else "")
                + (" †" if r["mixed_configs"] else "") + (" §" if r["shared"] else ""))
        img = "-" if r["img_s"][0] is None else f"{r['img_s'][0]:,.0f}"
        mem = "-" if r["peak_mem_gib"][0] is None else f"{r['peak_mem_gib'][0]:.2f}"
        wall = _secs(r["pretrain_wall_s"][0]) + (" ‡" if r["resumed"] and r["pretrain_wall_s"][0] is not None else "")
        alone = "-" if r["img_s_alone"] is None else f"{r['img_s_alone']:,.0f}"
        minutes = "-" if r["train_min_alone"] is None else f"{r['train_min_alone']:.1f}"
        lines.append(f"| {name} | {r['n']} | {_fmt(*r['knn_last_top1'])} | {_fmt(*r['linear_last_top1'])} | {img} "
                     f"| {alone} | {minutes} | {mem} | {wall} | {_secs(r['eval_wall_s'][0])} |")
    et, ee = s.get("eval_train") or 60000, s.get("eval_test") or 10000
    lines += [
        "",
        f"- **kNN top-1**: weighted kNN (k={s.get('knn_k')}, T={s.get('knn_t')}) on L2-normalised frozen features of "
        f"the **last** pretraining epoch; bank = {et:,} train images, queries = {ee:,} test images.",
        f"- **linear top-1**: a linear classifier on the same frozen features (computed once, no augmentation), SGD "
        f"Nesterov, lr 1.0 cosine, batch 256, {s.get('linear_epochs')} epochs; accuracy of its **last** epoch.",
        "- Every accuracy is the **mean ± sample standard deviation over the seeds counted in `seeds`** "
        "(one value when there is one seed), each seed a full pretraining + evaluation; no number is the best "
        "epoch picked on the test set (those, `knn_monitor_best_top1` / `linear_best_top1`, are in the JSON and "
        "labelled optimistic).",
        "- **images/s**: median of the training rate logged during pretraining, each source image counted once; "
        f"**{mem_head}**: " + ("`torch.cuda.max_memory_allocated` over pretraining" if mem_head.startswith("peak GPU")
                               else "the process's max RSS so far (cumulative across the runs of one invocation)")
        + "; **pretrain s**: wall time of pretraining including the per-epoch kNN monitor; **eval s**: feature "
        "extraction, kNN and linear probe. Means over seeds. The run's own clock counts whatever else shared the "
        "machine; **images/s alone** is the step timed by itself (`--time-steps`: a short run of the same config, "
        "steps timed after warm-up steps) and **training min alone** the steps done times that step time: what "
        "the pretraining costs on the idle machine, monitor excluded.",
    ]
    if any(is_oracle(r["combo"]) for r in rows):
        lines.append("- **+mask_false_negatives** is the label-oracle control (docs/evaluation.md): the host's loss with "
                     "same-class negatives removed using the true labels. Not self-supervised: the upper bound a "
                     "false-negative method should approach at this budget.")
    if any(is_control(r["combo"]) for r in rows):
        lines.append("- **mocov2-ascl-form** / **byol-ascl-form** (controls): the host in the form ASCL's official "
                     "code runs it (MoCo v2: weak key view, temperature 0.1; BYOL: one direction, weak target view, "
                     "no projector BN) with ASCL's soft targets off, so that ASCL's own effect is its row minus "
                     "the control's (docs/comparison.md, \"Which combinations\").")
    if any(r["baseline"] for r in rows):
        lines.append("- **random_init** / **pixels** (no pretraining): the same backbone randomly initialised with the "
                     "seed, and raw pixels centred with the train split's mean, evaluated the same way: the floor a "
                     "method must clear.")
    if any(r["mixed_configs"] for r in rows):
        lines.append("- † the seeds of this row were run with different configs (a recipe changed between sessions).")
    if any(r["shared"] for r in rows):
        jobs = sorted({r.get("concurrent_jobs") for r in data.get("runs", []) if (r.get("concurrent_jobs") or 1) > 1})
        lines.append(f"- § a seed of this row ran as one of {' or '.join(map(str, jobs))} workers sharing the machine "
                     "(`--jobs`): its images/s and wall times count the sharing. On a CPU each worker had cores / "
                     "workers torch threads (`threads` of each run in the file): another order of float additions "
                     "than a lone run's, the same recipe.")
    if any(r["resumed"] for r in rows):
        lines.append("- ‡ a seed of this row was resumed after an interruption: its wall time covers the last "
                     "part only.")
    envs = {}
    for r in data.get("runs", []):
        e = r.get("environment") or {}
        key = (e.get("device"), e.get("torch"), e.get("lightning"))
        envs.setdefault(key, []).append(e.get("date", "")[:10])
    for (dev, tv, lv), dates in sorted(envs.items(), key=lambda kv: str(kv[0])):
        lines.append(f"- Machine: {dev}; torch {tv}, lightning {lv}; runs dated {min(dates)} to {max(dates)}.")
    times = [t for t in (data.get("steptime") or {}).values()]
    if times:
        dates = [t["date"][:10] for t in times]
        others = [t["others_cpu_share"] for t in times if t.get("others_cpu_share") is not None]
        lines.append(f"- Step times alone: {len(times)} combinations, {times[0]['timed_steps']} steps timed after "
                     f"{times[0]['warmup_steps']} warm-up steps, dated {min(dates)} to {max(dates)}"
                     + (f"; other processes used at most {100 * max(others):.1f}% of the CPUs meanwhile" if others
                        else "") + ".")
    lines += render_claims(data, rows)
    lines += ["", "Per seed (last epoch, %):", "",
              "| method | seed | kNN top-1 | linear top-1 | images/s | pretrain s |", "|---|---|---|---|---|---|"]
    for r in sorted(data.get("runs", []), key=lambda r: ([x["combo"] for x in rows].index(r["combo"]), r["seed"])):
        img = "-" if r.get("img_s") is None else f"{r['img_s']:,.0f}"
        wall = _secs(r.get("pretrain_wall_s"))
        lines.append(f"| {r['combo']} | {r['seed']} | {r['knn_last_top1']:.2f} | {r['linear_last_top1']:.2f} | {img} "
                     f"| {wall} |")
    if data.get("failures"):
        lines += ["", "Failed (not in the table): " + "; ".join(
            f"{f['combo']} seed {f['seed']}: {f['error'][:120]}" for f in data["failures"])]
    return "\n".join(lines) + "\n"


# the papers' claims at this budget: (row that should be better, the row it should beat)
CLAIMS = (("msvq", "mocov2"), ("msvq", "ressl"), ("pnnclr", "nnclr"), ("wcl", "simclr"),
          ("mocov2+ascl", "mocov2"), ("byol+ascl", "byol"),
          ("simclr+bsim", "simclr"), ("mocov2+bsim", "mocov2"), ("byol+bsim", "byol"),
          # ASCL's soft targets alone: against its host in the form ASCL's code runs it (CONTROLS)
          ("mocov2+ascl", "mocov2-ascl-form"), ("byol+ascl", "byol-ascl-form"),
          # and that form alone, ASCL off: against the plain host
          ("mocov2-ascl-form", "mocov2"), ("byol-ascl-form", "byol"))
METRICS = (("knn_last_top1", "kNN"), ("linear_last_top1", "linear"))


def verdict(a: dict, b: dict, key: str, seeds_needed: int) -> tuple[str, float | None, float | None]:
    """Whether row ``a`` beats row ``b`` on ``key``: the difference of the means against the seeds'
    spread (the sum of the two sample standard deviations, so that mean ± sd of the two rows do not
    overlap); a verdict only with ``seeds_needed`` seeds in both rows."""
    (ma, sa), (mb, sb) = a[key], b[key]
    if ma is None or mb is None:
        return "not run yet", None, None
    diff = ma - mb
    if min(a["n"], b["n"]) < seeds_needed:
        return f"pending ({min(a['n'], b['n'])} of {seeds_needed} seeds)", diff, None
    spread = (sa or 0.0) + (sb or 0.0)
    if diff > spread:
        return "reproduced", diff, spread
    if -diff > spread:
        return "reversed (beyond the spread)", diff, spread
    return "not reproduced at this scale", diff, spread


def seeds_won(a: dict | None, b: dict | None) -> str:
    """In how many of the seeds both rows ran ``a`` scored above ``b`` (the same seed: the same initial
    weights and order of images), kNN and linear; information beside the verdict, not the verdict."""
    if not a or not b:
        return "-"
    common = sorted(set(a["per_seed"]) & set(b["per_seed"]))
    if not common:
        return "-"
    wins = [sum(1 for s in common if (a["per_seed"][s][k] or 0.0) > (b["per_seed"][s][k] or 0.0)) for k, _ in METRICS]
    return f"{wins[0]}/{len(common)}, {wins[1]}/{len(common)}"


def row_name(r: dict) -> str:
    """A row's name in the generated docs tables, with what kind of row it is."""
    return r["combo"] + (" (no pretraining)" if r["baseline"] else "") + (
        " (label oracle)" if is_oracle(r["combo"]) else "") + (" (control)" if is_control(r["combo"]) else "")


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.2f}"


def render_claims(data: dict, rows: list[dict]) -> list[str]:
    """The papers' claims, the label oracle's distance and the cost per point, from the rows."""
    preset = PRESETS.get(data.get("preset"))
    need = len(preset.seeds) if preset else 3
    by = {r["combo"]: r for r in rows}
    out = ["", "The papers' claims at this budget, and the two ASCL controls against their rows "
           "(difference of the means, points; spread = the sum of the two "
           f"rows' sample standard deviations; a verdict needs {need} seeds of both rows; \"reproduced\" only when "
           "the difference exceeds the spread):", "",
           "| claim | kNN difference | kNN spread | kNN verdict | linear difference | linear spread | linear verdict "
           "| seeds won (kNN, linear) |",
           "|---|---|---|---|---|---|---|---|"]
    for a, b in CLAIMS:
        if a not in by and b not in by:
            continue
        cells = []
        for key, _ in METRICS:
            if a in by and b in by:
                v, diff, spread = verdict(by[a], by[b], key, need)
            else:
                v, diff, spread = "not run yet", None, None
            cells += [_signed(diff), "-" if spread is None else f"{spread:.2f}", v]
        cells.append(seeds_won(by.get(a), by.get(b)))
        out.append(f"| {a} beats {b} | " + " | ".join(cells) + " |")
    oracles = [r for r in rows if is_oracle(r["combo"]) and r["knn_last_top1"][0] is not None]
    methods = [r for r in rows if not r["baseline"] and not is_oracle(r["combo"])]
    pixels = by.get("pixels")
    if oracles and methods:
        best = {key: max(oracles, key=lambda r: r[key][0]) for key, _ in METRICS}
        out += ["", "Distance to the label oracle (the better `+mask_false_negatives` row per metric: kNN "
                f"{best['knn_last_top1']['combo']}, linear {best['linear_last_top1']['combo']}; points below it):", "",
                "| method | seeds | kNN below the oracle | linear below the oracle |", "|---|---|---|---|"]
        for r in methods:
            gaps = [_signed(best[k][k][0] - r[k][0]) if r[k][0] is not None else "-" for k, _ in METRICS]
            out.append(f"| {row_name(r)} | {r['n']} | " + " | ".join(gaps) + " |")
    out += render_oracle_share(by)
    timed = [r for r in methods if r["train_min_alone"] and r["knn_last_top1"][0] is not None]
    if pixels and pixels["knn_last_top1"][0] is not None and timed:
        px = pixels["knn_last_top1"][0]

        def front(r):  # no other row is at least as good in kNN and faster alone
            return not any(o is not r and o["knn_last_top1"][0] >= r["knn_last_top1"][0]
                           and o["train_min_alone"] < r["train_min_alone"] for o in timed)

        out += ["", "Cost per point: kNN points above raw pixels against the training minutes alone (the "
                "representation per CPU second); * = on the front (no other row is as good in kNN and faster):", "",
                "| method | training min alone | kNN above pixels | points per training minute |", "|---|---|---|---|"]
        for r in sorted(timed, key=lambda r: r["train_min_alone"]):
            gain = r["knn_last_top1"][0] - px
            out.append(f"| {row_name(r)}{' *' if front(r) else ''} | {r['train_min_alone']:.1f} | {gain:+.2f} | "
                       f"{gain / r['train_min_alone']:+.3f} |")
    return out


def render_oracle_share(by: dict) -> list[str]:
    """For each claim whose host has its own label-oracle row (``<host>+mask_false_negatives``): the
    oracle's gain over the host (what removing every false negative is worth at this budget) and the
    share of it the method recovers, (method - host) / (oracle - host), per metric."""
    pairs = [(a, b) for a, b in CLAIMS if a in by and b in by and f"{b}+mask_false_negatives" in by]
    if not pairs:
        return []
    out = ["", "How much of the label oracle's gain over the host each method recovers (the host's own "
           "`+mask_false_negatives` row, which drops the false negatives the labels reveal; share = (method - "
           "host) / (oracle - host); seeds = the fewest of the three rows):", "",
           "| method | host | seeds | oracle - host (kNN, linear) | method - host (kNN, linear) "
           "| share recovered (kNN, linear) |", "|---|---|---|---|---|---|"]
    for a, b in pairs:
        rows = (by[a], by[b], by[f"{b}+mask_false_negatives"])
        cells = [[], [], []]
        for key, _ in METRICS:
            m, h, o = (r[key][0] for r in rows)
            if None in (m, h, o):
                for c in cells:
                    c.append("-")
                continue
            cells[0].append(f"{o - h:+.2f}")
            cells[1].append(f"{m - h:+.2f}")
            cells[2].append(f"{(m - h) / (o - h):.0%}" if o - h > 0 else "-")  # no room: no share
        out.append(f"| {row_name(by[a])} | {row_name(by[b])} | {min(r['n'] for r in rows)} | "
                   + " | ".join(", ".join(c) for c in cells) + " |")
    return out


def docs_markers(out_json: Path) -> tuple[str, str]:
    """The HTML comments that fence a results file's generated block in a Markdown page."""
    return (f"<!-- begin generated block: {out_json.name} (compare.py --docs) -->",
            f"<!-- end generated block: {out_json.name} -->")


def render_docs_block(data: dict, out_json: Path) -> str:
    """What a docs page shows of a results file: one row per combination (mean and spread over the
    seeds so far), the rows against the file's own raw-pixels floor, and the claims section."""
    rows = aggregate(data)
    try:
        where = out_json.resolve().relative_to(ROOT)
    except ValueError:
        where = Path(out_json.name)
    cmd = f"python benchmarks/compare.py --preset {data.get('preset')} --table-only --docs <pages>"
    lines = [f"Generated from `{where}` by `{cmd}` (do not edit by hand: a test compares this block with the file).",
             "Last epoch, mean ± sample sd over the seeds counted; training minutes alone: the steps done times "
             "the step time measured alone (`--time-steps`).", "",
             "| combination | seeds | kNN top-1 % | linear top-1 % | training min alone |", "|---|---|---|---|---|"]
    for r in rows:
        name = row_name(r)
        minutes = "-" if r["train_min_alone"] is None else f"{r['train_min_alone']:.1f}"
        lines.append(f"| {name} | {r['n']} | {_fmt(*r['knn_last_top1'])} | {_fmt(*r['linear_last_top1'])} "
                     f"| {minutes} |")
    pixels = next((r for r in rows if r["combo"] == "pixels"), None)
    pretrained = [r for r in rows if not r["baseline"] and not is_oracle(r["combo"])]
    lines.append("")
    if pixels is None:
        lines.append("This file has no raw-pixels row yet: the floor comes with the preset's baseline runs.")
    elif pretrained:
        parts = []
        for key, label in METRICS:
            gains = [r[key][0] - pixels[key][0] for r in pretrained if r[key][0] is not None]
            above = sum(g > 0 for g in gains)
            parts.append(f"{label} {pixels[key][0]:.2f}%: {above} of {len(gains)} self-supervised rows above it "
                         f"(from {min(gains):+.2f} to {max(gains):+.2f} points)")
        lines.append("Against this file's raw-pixels row (" + "; ".join(parts) + ").")
    lines += render_claims(data, rows)
    return "\n".join(lines) + "\n"


def sync_docs(page: Path, out_json: Path, data: dict) -> bool:
    """Rewrite the generated block of ``out_json`` in ``page``; True when the page changed.
    The page must already hold the two markers (``docs_markers``), begin before end."""
    return replace_block(page, *docs_markers(out_json), render_docs_block(data, out_json), "compare", out_json.name)


def replace_block(page: Path, begin: str, end: str, body: str, tool: str, what: str) -> bool:
    """Put ``body`` between the lines ``begin`` and ``end`` of ``page`` (atomically); True when it changed."""
    text = page.read_text()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise SystemExit(f"{tool}: error: {page} has no generated block for {what}; put the two lines "
                         f"'{begin}' and '{end}' where the block belongs, then run again")
    new = text[:i + len(begin)] + "\n" + body + text[j:]
    if new != text:
        write_atomic(page, new)
    return new != text


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _style(combo: str):
    """Colour by host method (a plug-in variant shares its host's colour), marker / line by plug-in."""
    import matplotlib

    host, _, plugin = combo.partition("+")
    hosts = list(METHODS)
    cmap = matplotlib.colormaps["tab10"]
    colour = cmap(hosts.index(host) % 10) if host in hosts else "black"
    marker, ls = {"": ("o", "-"), "ascl": ("s", "--"), "bsim": ("^", ":")}.get(plugin, ("D", "-."))
    return colour, marker, ls


def render_plots(data: dict, out_json: Path) -> list[Path]:
    """Accuracy against pretraining time, and kNN against epoch; [] without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        print("compare: matplotlib is not installed (pip install 'relssl[plots]'): no plots", flush=True)
        return []
    rows = aggregate(data)
    methods = [r for r in rows if not r["baseline"]]
    bases = {r["combo"]: r for r in rows if r["baseline"]}
    stem = out_json.with_suffix("")
    paths = []
    fig = _figure(11, 4.6)
    for j, (key, title) in enumerate((("linear_last_top1", "linear probe top-1 (last epoch)"),
                                      ("knn_last_top1", "kNN top-1 (last epoch)"))):
        ax = fig.add_subplot(1, 2, j + 1)
        alone = all(r["train_min_alone"] is not None for r in methods)
        for r in methods:
            if alone:
                x, xsd = r["train_min_alone"], None
            else:
                x, xsd = r["train_s"] if r["train_s"][0] is not None else r["pretrain_wall_s"]
            y, ysd = r[key]
            if x is None or y is None:
                continue
            c, mk, _ = _style(r["combo"])
            ax.errorbar([x], [y], yerr=[ysd or 0.0], xerr=[xsd or 0.0], fmt=mk, color=c, capsize=3, ms=6,
                        label=f"{r['combo']} (n={r['n']})")
            ax.annotate(r["combo"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
        for name, ls in (("pixels", ":"), ("random_init", "--")):
            if name in bases and bases[name][key][0] is not None:
                ax.axhline(bases[name][key][0], color="grey", ls=ls, lw=1, label=f"{name} (no pretraining)")
        ax.set_xlabel("training minutes alone (steps x the step timed alone)" if alone
                      else "pretraining time without the kNN monitor (s, mean over seeds)")
        ax.set_ylabel("top-1 % (mean ± sd over seeds)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"Fashion-MNIST, equal budget, preset {data.get('preset')}", fontsize=10)
    p1 = Path(f"{stem}_accuracy_vs_time.png")
    fig.savefig(p1, format="png", bbox_inches="tight")
    paths.append(p1)

    fig = _figure(7.5, 5)
    ax = fig.add_subplot(1, 1, 1)
    for r in methods:
        if not r["curve"]:
            continue
        c, mk, ls = _style(r["combo"])
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, ls=ls, marker=mk, ms=3, color=c, label=f"{r['combo']} (n={r['n']})")
    s = data.get("settings", {})
    ax.set_xlabel("epoch (0 = random initialisation)")
    ax.set_ylabel("kNN top-1 % (monitor; mean over seeds)")
    ax.set_title(f"kNN monitor during pretraining (bank {s.get('monitor_bank') or 60000}, "
                 f"test {s.get('monitor_test') or 10000})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2, loc="lower right")
    p2 = Path(f"{stem}_knn_curves.png")
    fig.savefig(p2, format="png", bbox_inches="tight")
    paths.append(p2)
    return paths


def render(out_json: Path, quiet: bool = False) -> tuple[Path | None, list[Path]]:
    data = read_results(out_json)
    if data is None or not data.get("runs"):
        print(f"compare: no finished runs in {out_json} yet", flush=True)
        return None, []
    text = render_table(data, out_json)
    md = out_json.with_suffix(".md")
    write_atomic(md, text)
    if not quiet:
        print(text, flush=True)
    plots = render_plots(data, out_json)
    print(f"compare: table {md}" + "".join(f"; plot {p}" for p in plots), flush=True)
    return md, plots


# ----------------------------------------------------------------------------- main


def select(methods: list[str], preset: Preset, best_from: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    combos = {c[0]: c for c in combinations()}
    combos.update({b: (b, b, ()) for b in BASELINES})
    if not methods:
        if preset.name == "long":
            methods = ["mocov2"]
            best = best_combo(best_from)
            if best and best != "mocov2":
                methods.append(best)
            extra = (f" and {best}, the best linear top-1 in {best_from}" if best and best != "mocov2"
                     else f" only (best in {best_from}: {best or 'no results yet'})")
            print("compare: long preset: mocov2" + extra, flush=True)
        else:
            methods = ["all"]
    if "all" in methods:
        return list(combos.values())
    unknown = [m for m in methods if m not in combos]
    if unknown:
        raise ConfigError(f"unknown combination(s) {', '.join(unknown)}; choose from all, {', '.join(combos)}")
    return [combos[m] for m in dict.fromkeys(methods)]


def is_oracle(combo: str) -> bool:
    """A label-oracle control (it trains on the labels), not a self-supervised method."""
    return "mask_false_negatives" in combo


def best_combo(path: Path) -> str | None:
    data = read_results(path)
    if not data:
        return None
    # the best self-supervised combination: neither a no-pretraining baseline nor a control (label oracle, host form)
    rows = [r for r in aggregate(data) if not r["baseline"] and r["linear_last_top1"][0] is not None
            and not is_oracle(r["combo"]) and not is_control(r["combo"])]
    if not rows:
        return None
    return max(rows, key=lambda r: (r["linear_last_top1"][0], r["knn_last_top1"][0] or 0.0))["combo"]


def time_all(args, preset: Preset, settings: dict, plan, out: Path) -> dict:
    """``--time-steps``: each planned combination's step timed alone, recorded under ``steptime``."""
    if args.timed_steps < 1 or args.warmup_steps < 1:
        raise ConfigError(f"--timed-steps and --warmup-steps must be >= 1, got {args.timed_steps} and "
                          f"{args.warmup_steps}")
    combos = list(dict.fromkeys(c for c, _ in plan if c[0] not in BASELINES))
    runs_dir = args.runs_dir.resolve()
    for combo, method, plugins in combos:
        build_config(combo, method, plugins, preset, 0, runs_dir, args.accelerator)  # every config checked first
    splits = load_data(build_config("mocov2", "mocov2", (), preset, 0, runs_dir, args.accelerator)) if combos else None
    timed = {}
    for combo, method, plugins in combos:
        entry = time_steps(combo, method, plugins, preset, splits, runs_dir, args.accelerator,
                           warmup=args.warmup_steps, steps=args.timed_steps)
        print(f"compare: {combo}: {entry['seconds_per_step']:.3f} s per step alone ({entry['img_s']:,.0f} images/s; "
              f"other processes' share of the CPUs meanwhile {entry['others_cpu_share']})", flush=True)

        def add(data, combo=combo, entry=entry):
            data = data or new_results(preset, settings)
            data.setdefault("steptime", {})[combo] = entry
            return data

        update_results(out, add)
        timed[combo] = entry
        gc.collect()
    md, plots = render(out, quiet=True)
    return {"ran": [], "skipped": [], "failed": [], "timed": timed, "table": md, "plots": plots, "out": out}


def run_workers(jobs: int, given: list[str], out: Path, docs: list[Path]) -> dict:
    """``--jobs N``: N worker processes of this same command share the plan (each claims a run before
    starting it, see ``claimed``); waits for them, then renders the table and the docs blocks once.
    SIGINT / SIGTERM reach the workers, which stop their runs resumably."""
    import signal

    cmd = [sys.executable, str(Path(__file__).resolve()), *given, "--jobs", "1", "--worker-of", str(jobs)]
    print(f"compare: {jobs} workers", flush=True)
    # in sessions of their own: a Ctrl-C at the terminal reaches the workers once, through ``forward``
    procs = [subprocess.Popen(cmd, start_new_session=True) for _ in range(jobs)]

    def forward(signum, frame):
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    with locked(out):
        md, plots = render(out, quiet=True)
        for page in docs if md is not None else []:
            sync_docs(page, out, read_results(out))
    data = read_results(out) or {}
    failed = [(f["combo"], f["seed"]) for f in data.get("failures", [])] if any(codes) else []
    if any(codes):
        print(f"compare: worker exit codes {codes}", flush=True)
    if any(c in (130, 143) for c in codes):
        raise SystemExit(max(codes))
    return {"ran": [], "skipped": [], "failed": failed, "workers": codes, "table": md, "plots": plots, "out": out}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="gpu")
    ap.add_argument("--seeds", type=int, nargs="+", help="default: the preset's (gpu 0 1 2; long and cpu-smoke 0)")
    ap.add_argument("--methods", nargs="+", default=[],
                    help="combinations (simclr, mocov2+ascl, ...; random_init and pixels are the no-pretraining "
                         "baselines) or 'all' (the default; long: mocov2 and the best of the gpu results)")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/compare_<preset>.json, with "
                    "_e<N> / _p<N> added for non-default --epochs / --linear-epochs); the table (.md) and plots (.png) "
                    "go beside it")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "compare",
                    help="run directories (default runs/compare)")
    ap.add_argument("--table-only", action="store_true", help="render the table and plots from --out, run nothing")
    ap.add_argument("--docs", type=Path, nargs="+", default=[],
                    help="also rewrite this results file's generated block in these Markdown pages (between their "
                         "markers; docs/comparison.md and README.md hold the cpu-budget one)")
    ap.add_argument("--dry-run", action="store_true", help="build and check every config, print the plan, run nothing")
    ap.add_argument("--linear-epochs", type=int, help="linear-probe epochs (default: the preset's; gpu and long 100)")
    ap.add_argument("--epochs", type=int, help="pretraining epochs (default: the preset's; gpu 10, long 100); the "
                    "warm-up stays the preset's, at most epochs - 1")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="seconds: do not start a run expected to end after this much time (0: no limit)")
    ap.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints (default: removed "
                    "once the run is evaluated and recorded; results.json, metrics.csv and config.yaml stay)")
    ap.add_argument("--best-from", type=Path, default=RESULTS_DIR / "compare_gpu.json",
                    help="long preset: the results whose best combination gets the long run")
    ap.add_argument("--time-steps", action="store_true",
                    help="time each combination's training step alone (a short run of its config; run it on an "
                         "otherwise idle machine) and record it in --out; pretrains nothing else")
    ap.add_argument("--timed-steps", type=int, default=30, help="--time-steps: steps timed (default 30)")
    ap.add_argument("--warmup-steps", type=int, default=5, help="--time-steps: steps run first, untimed (default 5)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time: this many worker processes share the plan, each claiming a run before "
                         "starting it (a GPU that one run leaves idle part of the time does more in total; each "
                         "run's own images/s and wall time then count the sharing)")
    ap.add_argument("--worker-of", type=int, default=0, help=argparse.SUPPRESS)  # set by --jobs for its workers
    ap.add_argument("--subset", type=int, help=argparse.SUPPRESS)  # tests: pretrain on N images, evaluate on N / 2
    args = ap.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.epochs is not None:
        preset = dataclasses.replace(preset, epochs=args.epochs,
                                     warmup_epochs=min(preset.warmup_epochs, max(0.0, args.epochs - 1.0)))
    if args.subset is not None:
        half = max(1, args.subset // 2)
        preset = dataclasses.replace(preset, subset=args.subset, monitor_bank=half, monitor_test=half,
                                     eval_train=half, eval_test=half)
    linear_epochs = args.linear_epochs or preset.linear_epochs
    base = PRESETS[args.preset]
    stem = f"compare_{preset.name}" + (f"_e{preset.epochs}" if preset.epochs != base.epochs else "") + (
        f"_p{linear_epochs}" if linear_epochs != base.linear_epochs else "") + (
        f"_n{preset.subset}" if preset.subset != base.subset else "")
    out = (args.out or RESULTS_DIR / f"{stem}.json").resolve()
    for page in args.docs:
        if not page.is_file():
            raise SystemExit(f"compare: error: --docs {page}: no such file; name the Markdown pages that hold the "
                             "generated block (e.g. docs/comparison.md README.md)")
    if args.table_only:
        md, plots = render(out)
        for page in args.docs if md is not None else []:
            changed = sync_docs(page, out, read_results(out))
            print(f"compare: {page} {'updated' if changed else 'already up to date'}", flush=True)
        return {"ran": [], "skipped": [], "failed": [], "table": md, "plots": plots}

    settings = preset_settings(preset, linear_epochs)
    check_settings(read_results(out), settings, out)
    seeds = args.seeds if args.seeds is not None else list(preset.seeds)
    plan = [(c, s) for s in seeds for c in select(args.methods, preset, args.best_from)]
    accelerator = args.accelerator
    device = torch.device("cuda" if (accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()))
                          else "cpu")
    runs_dir = args.runs_dir.resolve()
    if args.worker_of > 1 and device.type == "cpu":
        share_cores(args.worker_of)

    if args.time_steps:
        return time_all(args, preset, settings, plan, out)
    if args.jobs < 1:
        raise SystemExit(f"compare: error: --jobs {args.jobs}: give 1 or more runs at a time")
    if args.jobs > 1 and importlib.util.find_spec("fcntl") is None:
        raise SystemExit("compare: error: --jobs needs file locks (fcntl), which this system lacks; run with --jobs 1")

    # every config is built (and checked) before any work
    for (combo, method, plugins), seed in plan:
        if combo not in BASELINES:
            build_config(combo, method, plugins, preset, seed, runs_dir, accelerator)
    done = done_keys(read_results(out))
    todo = [(c, s) for c, s in plan if (c[0], s) not in done]
    skipped = [(c[0], s) for c, s in plan if (c[0], s) in done]
    print(f"compare: preset {preset.name}; {len(plan)} runs planned, {len(skipped)} already in {out}, "
          f"{len(todo)} to run on {device.type}", flush=True)
    if args.dry_run:
        for (combo, method, plugins), seed in todo:
            if combo in BASELINES:
                print(f"  {combo} seed {seed}: evaluation only (no pretraining)")
                continue
            cfg = build_config(combo, method, plugins, preset, seed, runs_dir, accelerator)
            print(f"  {combo} seed {seed}: {recipe_label(combo)}, lr {cfg.optim.lr} x {cfg.optim.batch_size}/256, "
                  f"views {cfg.views}, config {config_hash(cfg)}")
        return {"ran": [], "skipped": skipped, "failed": [], "todo": [(c[0], s) for c, s in todo]}

    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in given)
    invocation = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine(), "git": git_state()}

    def start(data):
        data = data or new_results(preset, settings)
        data["invocations"].append(invocation)
        data["command"] = f"python benchmarks/compare.py --preset {preset.name}" + (
            f" --epochs {args.epochs}" if args.epochs is not None else "") + (
            f" --linear-epochs {args.linear_epochs}" if args.linear_epochs else "")
        return data

    if args.jobs > 1 and todo:
        return run_workers(args.jobs, given, out, args.docs)

    update_results(out, start)
    splits = load_data(build_config("mocov2", "mocov2", (), preset, 0, runs_dir, accelerator)) if todo else None
    t_begin = time.perf_counter()
    durations: dict[str, float] = {r["combo"]: r.get("total_s") or 0.0 for r in done.values()}
    ran, failed, not_started = [], [], []

    def run_claimed(combo, method, plugins, seed) -> dict | None:
        """One run, or None when it failed (recorded in the file's failures)."""
        print(f"compare: {combo} seed {seed} ...", flush=True)
        try:
            if combo in BASELINES:
                entry = run_baseline(combo, seed, preset, splits, linear_epochs, device)
            else:
                entry = run_one(combo, method, plugins, seed, preset, splits, runs_dir, accelerator, linear_epochs,
                                device, args.keep_checkpoints)
        except RunInterrupted as err:  # SIGTERM / SIGINT: the user stops the comparison, not this run
            print(f"compare: {combo} seed {seed} interrupted; its checkpoint is kept: run the "
                  "same command again to resume it and continue", flush=True)
            with locked(out):
                render(out)
            raise SystemExit(err.exit_code) from None
        except Exception as err:  # noqa: BLE001 - one failed combination must not stop the others
            msg = f"{type(err).__name__}: {err}"
            print(f"compare: {combo} seed {seed} FAILED: {msg}", flush=True)
            traceback.print_exc()
            failure = {"combo": combo, "seed": seed, "error": msg[:2000],
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}

            def add_failure(data, failure=failure):
                data["failures"] = [f for f in data.get("failures", [])
                                    if (f["combo"], f["seed"]) != (failure["combo"], failure["seed"])] + [failure]
                return data

            update_results(out, add_failure)
            failed.append((combo, seed))
            return None
        finally:
            gc.collect()  # the finished run's module, data copies and features
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return entry

    for (combo, method, plugins), seed in todo:
        elapsed = time.perf_counter() - t_begin
        guess = durations.get(combo) or (max(durations.values()) if durations else 0.0)
        if args.time_budget and elapsed + guess > args.time_budget:
            not_started.append((combo, seed))
            continue
        with claimed(runs_dir, run_name(preset.name, combo, seed)) as mine:
            if not mine or (combo, seed) in done_keys(read_results(out)):
                continue  # another worker of this comparison runs it, or has recorded it meanwhile
            entry = run_claimed(combo, method, plugins, seed)
            if entry is None:
                continue
            entry["concurrent_jobs"] = args.worker_of or 1
            entry["threads"] = torch.get_num_threads()

            def add(data, entry=entry):
                data["runs"] = [r for r in data["runs"] if (r["combo"], r["seed"]) != (entry["combo"], entry["seed"])]
                data["runs"].append(entry)
                data["failures"] = [f for f in data.get("failures", [])
                                    if (f["combo"], f["seed"]) != (entry["combo"], entry["seed"])]
                return data

            update_results(out, add)  # recorded before the claim is released: no other worker starts it again
        durations[combo] = entry["total_s"]
        ran.append((combo, seed))
        with locked(out):
            for page in args.docs:  # the pages follow the file run by run
                sync_docs(page, out, read_results(out))
        print(f"compare: {combo} seed {seed}: kNN {entry['knn_last_top1']:.2f}%, "
              f"linear {entry['linear_last_top1']:.2f}% (last epoch); {entry['total_s']:.0f} s", flush=True)

    if not_started:
        print(f"compare: --time-budget {args.time_budget:.0f} s: not started: "
              + ", ".join(f"{c} seed {s}" for c, s in not_started) + "; run the same command again to continue",
              flush=True)
    with locked(out):  # workers of one comparison render one at a time
        md, plots = render(out)
    return {"ran": ran, "skipped": skipped, "failed": failed, "not_started": not_started, "table": md, "plots": plots,
            "out": out}


if __name__ == "__main__":
    try:
        res = main()
    except ConfigError as err:
        print(f"compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if res.get("failed") else 0)
