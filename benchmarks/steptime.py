"""Seconds per training step of a config, measured now (shared by compare.py and cpu_budget.py), and
the machine's practical arithmetic rate, a large matmul timed now (shared by profile_step.py and
throughput.py).

A short run of the config through the engine (``optim.max_steps`` = warm-up + timed steps, monitor
off), the clock read at the end of each step: what a step costs on the machine as it is, data loading
and the framework included. Run it alone: the share of the CPUs other processes used while the
steps were timed is returned beside it (Linux; None elsewhere)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch

from relssl.config import apply_overrides, config_from_dict
from relssl.engine import pretrain

TIMING_OVERRIDES = ("trainer.knn_every=0", "trainer.knn_at_start=false", "trainer.monitor=none",
                    "trainer.monitor_subset=0")


def cpu_usage() -> tuple[float, float] | None:
    """(CPU seconds all processes have been busy, this process's CPU seconds) now; None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    t = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def seconds_per_step(cfg, splits=None, warmup: int = 5, steps: int = 30) -> tuple[float, float | None]:
    """(seconds per step of ``cfg`` over ``steps`` steps after ``warmup``, other processes' CPU share
    meanwhile). The short run's directory is removed."""
    named = [] if cfg.name else ["name=steptime"]  # a known run directory, removed after
    cfg = config_from_dict(apply_overrides(cfg.to_dict(), [f"optim.max_steps={warmup + steps}", *TIMING_OVERRIDES,
                                                            *named]))
    marks: dict[int, float] = {}
    usage: dict[int, tuple[float, float] | None] = {}

    class Marks(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            marks[trainer.global_step] = time.perf_counter()
            if trainer.global_step in (warmup, warmup + steps):
                usage[trainer.global_step] = cpu_usage()

    run_dir = Path(cfg.output_dir) / cfg.name
    shutil.rmtree(run_dir, ignore_errors=True)  # a timing run of an earlier call
    try:
        pretrain(cfg, splits=splits, quiet=True, extra_callbacks=[Marks()])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if warmup + steps not in marks or warmup not in marks:
        raise RuntimeError(f"the timing run stopped at step {max(marks, default=0)}, not {warmup + steps}")
    elapsed = marks[warmup + steps] - marks[warmup]
    return elapsed / steps, others_share(usage.get(warmup), usage.get(warmup + steps), elapsed)


def others_share(before, after, elapsed: float) -> float | None:
    """The share of all CPUs that other processes kept busy between two :func:`cpu_usage` readings
    ``elapsed`` seconds apart (None when either reading is missing)."""
    if not before or not after:
        return None
    (busy0, own0), (busy1, own1) = before, after
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (elapsed * (os.cpu_count() or 1))


def matmul_gflops(device: torch.device | str = "cpu", reps: int = 10) -> float:
    """GFLOP/s of a large square matmul on ``device``, timed now: the practical peak that a training
    step's arithmetic is compared with. float32 2048x2048 on a CPU; bf16 8192x8192 on a GPU (the
    precision the GPU recipe computes in)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
