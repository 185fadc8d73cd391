"""SIGTERM and SIGINT to a real ``relssl pretrain`` process: a resumable checkpoint at the step where
it stopped, a ``results.json`` saying so, exit status 143 / 130, and a resume that continues from
that step (never re-running an earlier one) to the weights of an uninterrupted run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from relssl.engine.checkpoint import load_checkpoint_file

STEPS_PER_EPOCH = 1600 // 64
FAST = ["backbone.name=convnet_tiny", "backbone.bn_splits=1", "data.subset=1600", "optim.batch_size=64",
        "optim.warmup_epochs=0", "optim.epochs=3", "method.proj_hidden=32", "method.proj_dim=16",
        "method.queue_size=200", "trainer.knn_every=0", "trainer.knn_at_start=false", "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.threads=1"]


def cli(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "relssl.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, text=True)


def logged_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("loss")]


def wait_for_step(run: Path, step: int, proc, timeout=240):
    """Block until the run has logged a training step >= ``step`` (metrics.csv is flushed every step)."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        try:
            if any(s >= step for s in logged_steps(run)):
                return True
        except (FileNotFoundError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    proc = cli("pretrain", "fashion_mnist/mocov2", *FAST, f"output_dir={root}", "name=ref")
    assert proc.wait(timeout=400) == 0, proc.stderr.read()
    return load_checkpoint_file(root / "ref" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_then_resume_equals_uninterrupted(sig, code, tmp_path, reference):
    run = tmp_path / "run"
    proc = cli("pretrain", "fashion_mnist/mocov2", *FAST, f"output_dir={tmp_path}", "name=run")
    # mid-epoch 2: after step 30 of 75 (epoch 1 ends at step 25)
    assert wait_for_step(run, 30, proc), proc.stderr.read() if proc.poll() is not None else "timeout"
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read().strip().splitlines()
    assert err[-1].startswith(f"relssl: interrupted by {signal.Signals(sig).name} at step "), err[-5:]
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] is False and results["interrupted"]["signal"] == signal.Signals(sig).name
    stopped = results["interrupted"]["step"]
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    # the checkpoint is the step where the run stopped, mid-epoch (not the end of epoch 1)
    assert ckpt["global_step"] == stopped and stopped % STEPS_PER_EPOCH != 0, stopped
    assert ckpt["relssl_position"] == {"epoch": stopped // STEPS_PER_EPOCH, "batches_done": stopped % STEPS_PER_EPOCH}
    before = logged_steps(run)
    assert before and max(before) == stopped - 1  # Lightning logs step k as k - 1... checked, not assumed
    proc = cli("pretrain", "--resume", str(run))
    assert proc.wait(timeout=400) == 0, proc.stderr.read()
    after = logged_steps(run)
    # the history is kept (append-only) and the resumed process starts where the first stopped:
    # no step is trained twice, none is skipped
    assert after[:len(before)] == before
    assert after[len(before):] == list(range(stopped, 3 * STEPS_PER_EPOCH))
    final = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == reference["global_step"] == 3 * STEPS_PER_EPOCH
    for k in reference["state_dict"]:  # student, EMA teacher, queue and its pointer
        assert torch.equal(reference["state_dict"][k], final["state_dict"][k]), k
    for a, b in zip(reference["optimizer_states"][0]["state"].values(),
                    final["optimizer_states"][0]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert json.loads((run / "results.json").read_text())["finished"] is True
