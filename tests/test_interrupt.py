"""SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before a time limit) to a real ``relssl pretrain``
process: a resumable checkpoint at the step where it stopped, a ``results.json`` saying so, exit
status 128 + the signal (143 / 130 / 138), and a resume that continues from that step (never
re-running an earlier one) to the weights of an uninterrupted run."""

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
from utils import cli, digest, fill

STEPS_PER_EPOCH = 1600 // 64
FAST = ["backbone.name=convnet_tiny", "backbone.bn_splits=1", "data.subset=1600", "optim.batch_size=64",
        "optim.warmup_epochs=0", "optim.epochs=3", "method.proj_hidden=32", "method.proj_dim=16",
        "method.queue_size=200", "trainer.knn_every=0", "trainer.knn_at_start=false", "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.threads=1"]


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


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR1, 138)])
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
    said = proc.stderr.read()
    # the resume is exact (below), so Lightning's warning that it may not be is not shown, nor its advertisement
    assert "Restored all states from the checkpoint" in said, said[-2000:]
    assert "ended before the epoch ended" not in said and "litlogger" not in said, said[-2000:]
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


# ------------------------------------------------------------------ resumes that cannot proceed


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fmnist_small):
    from relssl.engine import pretrain
    from utils import tiny_config

    root = tmp_path_factory.mktemp("fin")
    # data.subset in config.yaml: the CLI resume (full dataset) counts the same steps per epoch
    res = pretrain(tiny_config("simclr", root, "optim.epochs=1", "name=done", "data.subset=192"), splits=fmnist_small,
                   quiet=True)
    return Path(res["run_dir"])


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "relssl", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_resume_of_a_finished_run_changes_nothing(finished_run):
    before = digest(finished_run)
    code, err = run_cli("pretrain", "--resume", str(finished_run))
    assert code == 0 and len(err) == 1 and "already finished" in err[0] and "nothing changed" in err[0], err
    assert digest(finished_run) == before


@pytest.mark.parametrize("edit, says", [
    (lambda c: c.replace("name: simclr", "name: mocov2"), "config.yaml says method mocov2 but the checkpoint is a simclr run"),
    (lambda c: c.replace("\n  lr: ", "\n  lr: 0.5 #"), "config.yaml changed optim.lr since the checkpoint"),
])
def test_resume_after_config_edit_is_refused_before_any_change(edit, says, finished_run, tmp_path):
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(finished_run, run)
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    ckpt["global_step"] = 1  # an unfinished run, so only the edit can stop the resume
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(edit((run / "config.yaml").read_text()))
    before = digest(run)
    code, err = run_cli("pretrain", "--resume", str(run))
    assert code == 2 and len(err) == 1 and says in err[0] and "restore the run's config.yaml" in err[0], err
    assert digest(run) == before


def test_second_process_on_a_run_directory_is_refused(finished_run, tmp_path):
    import shutil

    from relssl.engine.lifecycle import RunLock

    run = tmp_path / "locked"
    shutil.copytree(finished_run, run)
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    ckpt["global_step"] = 1  # unfinished: the resume would train
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(holder.pid))  # a live owner
        before = digest(run)
        code, err = run_cli("pretrain", "--resume", str(run))
        assert code == 2 and len(err) == 1 and f"in use by process {holder.pid}" in err[0], err
        assert digest(run) == before
    finally:
        holder.kill()
        holder.wait()
    # its owner is gone: the lock is stale and taken over, and released again
    with RunLock(run) as lock:
        assert (run / ".lock").read_text() == str(os.getpid()) and lock.held
    assert not (run / ".lock").exists()


# ------------------------------------------------------------------ a real full disk


def test_full_disk_during_pretraining_ends_in_one_line_and_keeps_the_checkpoint(small_disk):
    run = small_disk / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = cli("pretrain", "fashion_mnist/mocov2", *FAST, "optim.epochs=6", f"output_dir={small_disk}", "name=run")
    t0 = time.time()
    while not ckpt.exists() and proc.poll() is None and time.time() - t0 < 240:
        time.sleep(0.05)
    assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "timeout"
    time.sleep(0.2)
    saved = load_checkpoint_file(ckpt)
    filler = fill(small_disk)
    code = proc.wait(timeout=300)
    err = proc.stderr.read()
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("relssl: error: cannot write ") and "No space left on device" in last, last
    assert "free disk space" in last
    assert not list(run.rglob("*.tmp")), list(run.rglob("*"))  # no partial file keeps the disk full
    kept = load_checkpoint_file(ckpt)  # the previous checkpoint, whole
    assert kept["global_step"] >= saved["global_step"]
    assert (run / "metrics.csv").stat().st_size > 0
    # space freed: the run resumes from that checkpoint and finishes
    filler.unlink()
    proc = cli("pretrain", "--resume", str(run))
    assert proc.wait(timeout=400) == 0, proc.stderr.read()[-2000:]
    assert load_checkpoint_file(ckpt)["global_step"] == 6 * STEPS_PER_EPOCH


def test_checkpoint_write_on_a_full_disk_is_one_error_and_leaves_no_partial_file(small_disk):
    from relssl.engine.checkpoint import atomic_torch_save
    from relssl.errors import CheckpointError

    path = small_disk / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    # 16 MB of weights on a 12 MB disk: torch.save itself fails (RuntimeError inside torch, not OSError)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last.ckpt: .*; free disk space"):
        atomic_torch_save({"state_dict": {"w": torch.zeros(4_000_000)}}, path)
    assert path.read_bytes() == before and not (small_disk / "last.ckpt.tmp").exists()


def test_the_trainer_writes_checkpoints_through_the_atomic_writer(tmp_path, fmnist_small, monkeypatch):
    """A real failed write during fit: torch.save breaks on the second checkpoint. The trainer's
    checkpoint I/O must turn that into one CheckpointError, remove its partial file and keep the
    first checkpoint whole (Lightning's own I/O would leave a traceback and no such guarantees)."""
    from relssl.engine import pretrain
    from relssl.errors import CheckpointError
    from utils import tiny_config

    real_save, calls = torch.save, []

    def breaking_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            f.write(b"half a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", breaking_save)
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=3", "trainer.knn_every=0", "trainer.knn_at_start=false",
                      "name=run")
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*last.ckpt: .*PytorchStreamWriter failed"):
        pretrain(cfg, splits=fmnist_small, quiet=True)
    monkeypatch.setattr(torch, "save", real_save)
    ckpts = tmp_path / "run" / "checkpoints"
    assert not list(ckpts.glob("*.tmp"))
    assert load_checkpoint_file(ckpts / "last.ckpt")["epoch"] == 0  # the first checkpoint, whole
