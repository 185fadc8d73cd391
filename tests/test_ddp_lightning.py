"""Issue #11 end to end: the real ``relssl pretrain`` under Lightning DDP, 2 CPU processes (gloo).

The command runs as a subprocess with ``trainer.devices=2``; Lightning's launcher re-runs it for
rank 1. Every run has a hard time limit (a deadlock fails the test instead of hanging it; the
whole process group is killed). A non-finite loss on one rank only (injected through a
``sitecustomize`` on PYTHONPATH) checks that the ranks stop (``nan_policy=stop``) or skip
(``skip``) together. Also ``trainer.sync_batchnorm``: its checks, what Lightning converts, and
that one process leaves the model as it is; and which process counts as rank 0.

    .venv/bin/python -m pytest -q tests/test_ddp_lightning.py
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from relssl.cli import main
from relssl.data import EpochBatchSampler
from relssl.engine.checkpoint import load_checkpoint_file
from relssl.errors import ConfigError

from utils import digest, read_metrics, tiny_config

WORLD = 2
SUBSET, BATCH, QUEUE = 512, 32, 200  # per-process batch 32: global batch 64, 8 steps an epoch
TIMEOUT = 150  # seconds for one distributed run (a run here takes ~10-15 s on 2 cores)
COMMON = ["backbone.name=convnet_tiny", "backbone.bn_splits=1", f"data.subset={SUBSET}", "data.bank_subset=500",
          "data.test_subset=200", f"optim.batch_size={BATCH}", "optim.warmup_epochs=0", "method.proj_hidden=32",
          "method.proj_dim=16", "trainer.knn_k=20", "trainer.knn_at_start=true", "trainer.log_every_n_steps=1",
          "trainer.progress_bar=false", "trainer.accelerator=cpu", f"trainer.devices={WORLD}", "trainer.threads=1"]
MOCO = ["pretrain", "fashion_mnist/mocov2", *COMMON, f"method.queue_size={QUEUE}", "optim.epochs=2",
        "trainer.knn_every=1"]
STEPS_PER_EPOCH = SUBSET // (WORLD * BATCH)


def cli_command() -> list[str]:
    """The installed ``relssl`` console script (what users run), else ``python -m relssl``."""
    script = Path(sys.executable).parent / "relssl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "relssl"]


def start(*args, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    for key in ("RELSSL_RUN_DIR", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE"):
        env.pop(key, None)  # a fresh launch: this process is rank 0 and launches rank 1 itself
    # a session of its own: on a timeout the whole group (rank 0 and the rank 1 it launched) is killed
    return subprocess.Popen([*cli_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    """Wait for the run (all of its processes: they share the output pipe); fail on a timeout or an error."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        pytest.fail(f"distributed run did not finish within {timeout} s (deadlock?); output tail:\n{out[-3000:]}")
    assert proc.returncode == 0, f"exit code {proc.returncode}; output tail:\n{out[-3000:]}"
    assert "Traceback" not in out and "relssl: error" not in out, out[-3000:]
    return out


def run_cli(*args, env_extra: dict | None = None) -> str:
    return finish(start(*args, env_extra=env_extra))


def global_order(num_samples: int, global_batch: int, epochs: int, seed: int) -> torch.Tensor:
    """The sample indices of every global batch, in order, as one process with the global batch draws them."""
    sampler = EpochBatchSampler(num_samples, global_batch, seed=seed)
    order = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order += list(sampler)
    return torch.cat(order)


def check_run_dir(run_dir: Path, checkpoints: set[str]) -> None:
    """One run directory with the usual files, the expected checkpoints, no temporary files."""
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "log.txt", "metrics.csv", "results.json", "checkpoints", "tb"} <= names, names
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == checkpoints
    stray = [str(p) for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not stray, stray


@pytest.fixture(scope="module")
def moco_runs(tmp_path_factory):
    """MoCo v2 on 2 processes, 2 epochs: the reference run (and its output)."""
    out_dir = tmp_path_factory.mktemp("ddp_moco")
    t0 = time.perf_counter()
    out = run_cli(*MOCO, f"output_dir={out_dir}", "name=ref")
    return out_dir, out, time.perf_counter() - t0


def test_mocov2_two_processes_end_to_end(moco_runs):
    out_dir, out, seconds = moco_runs
    print(f"mocov2 on {WORLD} CPU processes: {seconds:.1f} s")
    # rank 1 ran (Lightning re-launched the command) and did not make a run directory of its own
    assert f"GLOBAL_RANK: 1, MEMBER: 2/{WORLD}" in out
    assert [p.name for p in out_dir.iterdir()] == ["ref"]
    assert out.count("run directory:") == 1  # one summary, from rank 0
    run = out_dir / "ref"
    check_run_dir(run, {"last.ckpt", "best.ckpt"})
    assert f"batch: global {WORLD * BATCH} = {BATCH} per process x {WORLD} process(es)" in (run / "log.txt").read_text()

    res = json.loads((run / "results.json").read_text())
    assert res["batch"] == {"global": WORLD * BATCH, "per_device": BATCH, "processes": WORLD}
    steps = 2 * STEPS_PER_EPOCH  # the global batch is WORLD * BATCH
    assert res["steps"] == steps and res["epochs_done"] == 2
    assert isinstance(res["knn_last_top1"], float) and 0 < res["knn_last_top1"] <= 100
    assert isinstance(res["knn_init_top1"], float) and 0 < res["knn_init_top1"] <= 100
    assert [h["epoch"] for h in res["knn_history"]] == [1, 2]

    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == steps
    sd = ckpt["state_dict"]
    # the queue took the keys of both processes each step, in the order of the global batch
    assert int(sd["method.queue.count"]) == steps * WORLD * BATCH
    order = global_order(SUBSET, WORLD * BATCH, 2, yaml.safe_load((run / "config.yaml").read_text())["seed"])
    expected = torch.empty(QUEUE, dtype=torch.long)
    for j in range(len(order) - QUEUE, len(order)):
        expected[j % QUEUE] = order[j]
    assert torch.equal(sd["method.queue.bank_index"].cpu(), expected)
    best = load_checkpoint_file(run / "checkpoints" / "best.ckpt")
    assert best["global_step"] in (STEPS_PER_EPOCH, steps)

    rows = read_metrics(run)
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses)
    knn = [float(r["knn_top1"]) for r in rows if r.get("knn_top1")]
    assert knn == pytest.approx([h["top1"] for h in res["knn_history"]], abs=1e-3)


# imported by every process of a run (PYTHONPATH): rank 1's loss is NaN at the given steps, and every
# process prints after each step whether its parameters changed
NAN_ON_RANK_1 = """
import os

import torch

from relssl.engine.module import PretrainModule
from relssl.methods.{module} import {cls}

_orig = {cls}.training_step


def _training_step(self, views, info):
    out = _orig(self, views, info)
    if os.environ.get("LOCAL_RANK") == "1" and info.step in {steps}:
        out["loss"] = out["loss"] * float("nan")
    return out


{cls}.training_step = _training_step


def _params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _batch_start(self, batch, batch_idx):
    self._test_params = _params(self)


_batch_end = PretrainModule.on_train_batch_end


def _batch_end_and_report(self, outputs, batch, batch_idx):
    changed = not torch.equal(_params(self), self._test_params)
    rank = os.environ.get("LOCAL_RANK")
    print(f"test-hook: rank {{rank}} step {{self.global_step - 1}} changed {{changed}}", flush=True)
    return _batch_end(self, outputs, batch, batch_idx)


PretrainModule.on_train_batch_start = _batch_start
PretrainModule.on_train_batch_end = _batch_end_and_report
"""


def nan_on_rank_1(tmp_path: Path, module: str, cls: str, steps: tuple[int, ...]) -> dict:
    """The environment of a run whose rank 1 has a non-finite loss at ``steps``."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NAN_ON_RANK_1.format(module=module, cls=cls, steps=steps))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}


def test_mocov2_stop_then_resume_on_two_processes_equals_uninterrupted(moco_runs, tmp_path):
    """A non-finite loss on rank 1 only (step 9, in epoch 2) stops both ranks (``nan_policy=stop``: one
    rank stopping alone would leave the other waiting); ``--resume`` from the epoch-1 checkpoint, on 2
    processes again, ends with the weights, queue and kNN history of the uninterrupted reference."""
    ref_dir = moco_runs[0] / "ref"
    run = tmp_path / "runs" / "run"
    proc = start(*MOCO, f"output_dir={tmp_path / 'runs'}", "name=run",
                 env_extra=nan_on_rank_1(tmp_path, "mocov2", "MoCoV2", (STEPS_PER_EPOCH + 1,)))
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"the stopped run hung; output tail:\n{proc.communicate()[0][-3000:]}")
    # rank 0 exits with 2, unless Lightning's watcher of rank 1 (which exited with 2) killed it first
    assert proc.returncode != 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert (f"relssl: error: non-finite loss at step {STEPS_PER_EPOCH + 1} (mocov2); last good checkpoint: "
            f"{ckpt};") in out, out[-3000:]
    assert f"test-hook: rank 0 step {STEPS_PER_EPOCH + 1} changed" in out  # both ranks ran that step
    # rank 0 stopped with the same error, not with a failed collective (its traceback)
    assert "Traceback" not in out, out[-3000:]
    assert load_checkpoint_file(ckpt)["global_step"] == STEPS_PER_EPOCH

    out = run_cli("pretrain", "--resume", str(run))
    assert f"GLOBAL_RANK: 1, MEMBER: 2/{WORLD}" in out
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["run"]
    check_run_dir(run, {"last.ckpt", "best.ckpt"})
    a = load_checkpoint_file(ref_dir / "checkpoints" / "last.ckpt")
    b = load_checkpoint_file(ckpt)
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH
    for k in a["state_dict"]:  # online and key encoders, queue and its bookkeeping
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    ra = json.loads((ref_dir / "results.json").read_text())
    rb = json.loads((run / "results.json").read_text())
    assert rb["knn_init_top1"] == ra["knn_init_top1"]
    assert [h["top1"] for h in rb["knn_history"]] == [h["top1"] for h in ra["knn_history"]]


def _launch_env(**extra) -> dict:
    """This environment without any launcher's rank variables, plus ``extra``."""
    keep = {k: v for k, v in os.environ.items()
            if k not in ("RELSSL_RUN_DIR", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE")}
    return dict(keep, PYTHONUNBUFFERED="1", **extra)


def assert_same_weights(ref_dir: Path, run: Path) -> None:
    """``run`` ended with every tensor of ``ref_dir``'s last checkpoint (weights, teachers, queue), bit for bit."""
    a = load_checkpoint_file(ref_dir / "checkpoints" / "last.ckpt")
    b = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def check_launched_run(procs, runs: Path, ref_dir: Path, log_says: str) -> None:
    """Processes launched by hand made one run directory, wrote it once (one summary), logged
    ``log_says`` and ended with the reference run's weights."""
    outs = [finish(proc) for proc in procs]
    assert [p.name for p in runs.iterdir()] == ["ref"]
    run = runs / "ref"
    check_run_dir(run, {"last.ckpt", "best.ckpt"})
    assert sum(out.count("run directory:") for out in outs) == 1
    assert log_says in (run / "log.txt").read_text()
    assert_same_weights(ref_dir, run)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_launch_equals_the_lightning_launch(moco_runs, tmp_path):
    """``torchrun --nproc_per_node=2 -m relssl pretrain ...`` (torchrun starts both processes; Lightning
    finds its environment and launches nothing): one run directory, written once, and the weights,
    queue and kNN history of the run Lightning launched itself, bit for bit."""
    ref_dir = moco_runs[0] / "ref"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "relssl", *MOCO, f"output_dir={tmp_path / 'runs'}", "name=ref"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_launch_env(), start_new_session=True)
    out = finish(proc)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ref"]
    run = tmp_path / "runs" / "ref"
    check_run_dir(run, {"last.ckpt", "best.ckpt"})
    assert out.count("run directory:") == 1  # one summary, from rank 0
    assert "TorchElasticEnvironment" in (run / "log.txt").read_text()
    assert_same_weights(ref_dir, run)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (ref_dir, run))
    assert [h["top1"] for h in rb["knn_history"]] == [h["top1"] for h in ra["knn_history"]]
    assert rb["batch"] == ra["batch"] == {"global": WORLD * BATCH, "per_device": BATCH, "processes": WORLD}


def test_simulated_slurm_launch_equals_the_lightning_launch(moco_runs, tmp_path):
    """Two processes started with the variables ``srun`` sets for 2 tasks on one node: Lightning's
    SLURM environment is detected (it says so in log.txt) and the run equals Lightning's own launch."""
    ref_dir = moco_runs[0] / "ref"
    port = str(_free_port())
    procs = []
    for rank in range(WORLD):
        env = _launch_env(SLURM_NTASKS=str(WORLD), SLURM_NTASKS_PER_NODE=str(WORLD),
                   SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1",
                   SLURM_JOB_ID="4242", SLURM_JOB_NAME="relssl", SLURM_NODELIST="127.0.0.1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "relssl", *MOCO, f"output_dir={tmp_path / 'runs'}",
                                       "name=ref"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env, start_new_session=True))
    check_launched_run(procs, tmp_path / "runs", ref_dir, "SLURMEnvironment")


def test_two_nodes_of_one_process_equal_one_node_of_two(moco_runs, tmp_path):
    """``trainer.num_nodes=2 trainer.devices=1``, one process per "node" on this machine (``NODE_RANK``,
    ``MASTER_ADDR=127.0.0.1``): one run directory written once (by node 0), and the weights of one
    node with two processes."""
    ref_dir = moco_runs[0] / "ref"
    port = str(_free_port())
    args = [a for a in MOCO if not a.startswith("trainer.devices=")] + ["trainer.devices=1", "trainer.num_nodes=2"]
    procs = [subprocess.Popen([sys.executable, "-m", "relssl", *args, f"output_dir={tmp_path / 'runs'}", "name=ref"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env=_launch_env(NODE_RANK=str(node), MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for node in range(2)]
    check_launched_run(procs, tmp_path / "runs", ref_dir, "(node rank 0 of 2)")


def test_resume_on_one_process_of_a_two_process_run(moco_runs, tmp_path, capsys):
    """A run with ``optim.global_batch_size=64`` on 2 processes stops after epoch 1 (a non-finite loss on
    rank 1 in epoch 2) and is resumed with ``trainer.devices=1``: the global batch, the data order (the
    sample indices the queue holds), the step counter and the lr at every step are those of the
    uninterrupted 2-process run. The weights are not: one process draws the views of the whole batch
    with one generator and normalises BatchNorm over 64 images instead of 2 x 32 (docs/distributed.md).
    Without ``optim.global_batch_size`` the same resume is refused before any change."""
    ref_dir = moco_runs[0] / "ref"
    run = tmp_path / "runs" / "run"
    args = [a for a in MOCO if not a.startswith("optim.batch_size=")] + [f"optim.global_batch_size={WORLD * BATCH}"]
    proc = start(*args, f"output_dir={tmp_path / 'runs'}", "name=run",
                 env_extra=nan_on_rank_1(tmp_path, "mocov2", "MoCoV2", (STEPS_PER_EPOCH + 1,)))
    try:
        proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail("the stopped run hung")
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH

    out = run_cli("pretrain", "--resume", str(run), "trainer.devices=1")
    assert "GLOBAL_RANK: 1" not in out  # one process
    res = json.loads((run / "results.json").read_text())
    assert res["finished"] and res["steps"] == 2 * STEPS_PER_EPOCH
    assert res["batch"] == {"global": WORLD * BATCH, "per_device": WORLD * BATCH, "processes": 1}
    a = load_checkpoint_file(ref_dir / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert torch.equal(a["method.queue.bank_index"], b["method.queue.bank_index"])  # the same data order
    assert int(b["method.queue.count"]) == 2 * STEPS_PER_EPOCH * WORLD * BATCH
    lr = {r["step"]: float(r["lr"]) for r in read_metrics(run) if r.get("lr")}
    lr_ref = {r["step"]: float(r["lr"]) for r in read_metrics(ref_dir) if r.get("lr")}
    assert lr and all(lr[s] == pytest.approx(lr_ref[s]) for s in lr)

    # the reference run has a per-process batch, no fixed global batch: refused, nothing changed
    before = digest(ref_dir)
    assert main(["pretrain", "--resume", str(ref_dir), "trainer.devices=1"]) == 2
    assert "the global batch would change from 64 to 32; start runs that may move between numbers of devices " \
           "with optim.global_batch_size" in capsys.readouterr().err
    assert digest(ref_dir) == before


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143)])  # SIGUSR1 takes the same path (test_interrupt.py)
def test_signal_to_a_two_process_run_then_resume_equals_uninterrupted(sig, code, moco_runs, tmp_path):
    """The scheduler signals every process of the job (here: the process group) mid-epoch 2: both ranks
    stop together at a step boundary, rank 0 writes one resumable checkpoint of that step, the
    command exits with 128 + the signal, and ``--resume`` on 2 processes ends with the weights of the
    uninterrupted run, bit for bit."""
    ref_dir = moco_runs[0] / "ref"
    run = tmp_path / "runs" / "run"
    proc = start(*MOCO, f"output_dir={tmp_path / 'runs'}", "name=run")
    t0 = time.time()
    while time.time() - t0 < TIMEOUT:
        rows = read_metrics(run) if (run / "metrics.csv").is_file() else []
        if any(r.get("loss") and int(r["step"]) >= STEPS_PER_EPOCH + 2 for r in rows):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"the signalled run hung; output tail:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == code, out[-3000:]
    results = json.loads((run / "results.json").read_text())
    stopped = results["interrupted"]["step"]
    assert results["interrupted"]["signal"] == signal.Signals(sig).name and STEPS_PER_EPOCH < stopped < 2 * STEPS_PER_EPOCH
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == stopped
    run_cli("pretrain", "--resume", str(run))
    assert_same_weights(ref_dir, run)


def test_resume_on_two_processes_of_a_one_process_run(moco_runs, tmp_path):
    """The reverse move: a one-process run with ``optim.global_batch_size=64`` stopped mid-epoch 2 by
    SIGTERM, resumed with ``trainer.devices=2``: the same global batch, data order, step counter and
    lr at every step as the uninterrupted 2-process run."""
    ref_dir = moco_runs[0] / "ref"
    run = tmp_path / "runs" / "run"
    one = [a for a in MOCO if not a.startswith(("optim.batch_size=", "trainer.devices="))]
    proc = start(*one, "trainer.devices=1", f"optim.global_batch_size={WORLD * BATCH}", f"output_dir={tmp_path / 'runs'}",
                 "name=run")
    t0 = time.time()
    while time.time() - t0 < TIMEOUT:
        rows = read_metrics(run) if (run / "metrics.csv").is_file() else []
        if any(r.get("loss") and int(r["step"]) >= STEPS_PER_EPOCH + 2 for r in rows):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143
    stopped = json.loads((run / "results.json").read_text())["interrupted"]["step"]
    assert STEPS_PER_EPOCH < stopped < 2 * STEPS_PER_EPOCH
    out = run_cli("pretrain", "--resume", str(run), f"trainer.devices={WORLD}")
    assert f"GLOBAL_RANK: 1, MEMBER: 2/{WORLD}" in out
    res = json.loads((run / "results.json").read_text())
    assert res["finished"] and res["steps"] == 2 * STEPS_PER_EPOCH
    assert res["batch"] == {"global": WORLD * BATCH, "per_device": BATCH, "processes": WORLD}
    a = load_checkpoint_file(ref_dir / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert torch.equal(a["method.queue.bank_index"], b["method.queue.bank_index"])
    lr = {r["step"]: float(r["lr"]) for r in read_metrics(run) if r.get("lr")}
    lr_ref = {r["step"]: float(r["lr"]) for r in read_metrics(ref_dir) if r.get("lr")}
    assert len(lr) == 2 * STEPS_PER_EPOCH and all(lr[s] == pytest.approx(lr_ref[s]) for s in lr)


def test_simclr_two_processes_one_epoch_skips_together(tmp_path):
    """SimCLR (a loss over the gathered batch), kNN at the start and after the last epoch only, and
    ``trainer.nan_policy=skip`` with a non-finite loss on rank 1 only: both ranks skip those steps
    (one rank skipping alone would leave the other waiting in DDP's gradient all-reduce)."""
    out_dir = tmp_path / "runs"
    out = run_cli("pretrain", "fashion_mnist/simclr", *COMMON, "optim.epochs=1", "trainer.knn_every=0",
                  "trainer.nan_policy=skip", f"output_dir={out_dir}", "name=simclr",
                  env_extra=nan_on_rank_1(tmp_path, "simclr", "SimCLR", (2, 3)))
    assert out.count("run directory:") == 1
    assert out.count("non-finite loss at step") == 2  # printed once per skipped step, by rank 0
    for rank in range(WORLD):  # both ranks skipped the update of steps 2 and 3, and only those
        for step in range(STEPS_PER_EPOCH):
            assert f"test-hook: rank {rank} step {step} changed {step not in (2, 3)}" in out, (rank, step)
    assert [p.name for p in out_dir.iterdir()] == ["simclr"]
    run = out_dir / "simclr"
    check_run_dir(run, {"last.ckpt"})  # no best.ckpt without trainer.knn_every
    res = json.loads((run / "results.json").read_text())
    assert 0 < res["knn_last_top1"] <= 100 and 0 < res["knn_init_top1"] <= 100
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == res["steps"]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    rows = read_metrics(run)
    assert sum(float(r["skipped_steps"]) for r in rows if r.get("skipped_steps")) == 2
    losses = [float(r["loss"]) for r in rows if r.get("loss")]  # rank 0's: finite throughout
    assert losses and all(math.isfinite(x) for x in losses)


# ------------------------------------------------------------------------------------- rank zero


@pytest.mark.parametrize("env, devices, expected", [
    ({}, 2, True), ({"LOCAL_RANK": "1"}, 2, False), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 2, True),
    ({"NODE_RANK": "1"}, 2, False), ({"RANK": "3"}, 4, False), ({"SLURM_PROCID": "2"}, 4, False),
    ({"SLURM_PROCID": "2"}, 1, True),  # one process: always rank 0, whatever the environment
])
def test_launched_as_rank_zero(env, devices, expected, tmp_path, monkeypatch):
    from relssl.engine.rundir import _RANK_ENV, launched_as_rank_zero

    for key in _RANK_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launched_as_rank_zero(tiny_config("simclr", tmp_path, f"trainer.devices={devices}")) is expected


# ------------------------------------------------------------------------------------- SyncBatchNorm


def test_sync_batchnorm_config(tmp_path):
    assert tiny_config("mocov2", tmp_path).trainer.sync_batchnorm is False
    assert tiny_config("mocov2", tmp_path, "trainer.sync_batchnorm=true").trainer.sync_batchnorm is True
    with pytest.raises(ConfigError, match="trainer.sync_batchnorm must be true or false"):
        tiny_config("mocov2", tmp_path, "trainer.sync_batchnorm=maybe")
    with pytest.raises(ConfigError) as err:
        tiny_config("mocov2", tmp_path, "trainer.sync_batchnorm=true", "backbone.bn_splits=8")
    msg = str(err.value)
    assert "trainer.sync_batchnorm" in msg and "backbone.bn_splits" in msg and "\n" not in msg


def test_sync_batchnorm_on_cpu_processes_is_one_line_error(tmp_path, capsys):
    rc = main(["pretrain", "fashion_mnist/mocov2", *COMMON, "trainer.sync_batchnorm=true", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("relssl: error: trainer.sync_batchnorm") and "\n" not in err
    assert "trainer.accelerator=gpu" in err and "trainer.sync_batchnorm=false" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def _norm_layers(module: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_sync_batchnorm_conversion_covers_teachers(tmp_path, fmnist_small):
    """What DDP does with ``Trainer(sync_batchnorm=True)`` (``DDPStrategy.setup``: ``TorchSyncBatchNorm().apply``
    on the whole LightningModule before DDP wraps it) converts every BatchNorm, the EMA teacher's included."""
    from lightning.pytorch.plugins import TorchSyncBatchNorm

    from relssl.engine.module import PretrainModule
    from relssl.nn import ema_update

    cfg = tiny_config("mocov2", tmp_path, "trainer.sync_batchnorm=true")
    module = PretrainModule(cfg, fmnist_small)
    before = _norm_layers(module)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    assert any(n.startswith("method.teacher.") for n in before) and any(n.startswith("method.online.") for n in before)
    module = TorchSyncBatchNorm().apply(module)
    after = _norm_layers(module)
    assert after.keys() == before.keys() and set(after.values()) == {nn.SyncBatchNorm}
    # the same parameters and buffers under the same names: checkpoints load into plain BatchNorm
    assert module.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
    # the EMA update still pairs each teacher tensor with its student tensor
    ema_update(module.method.teacher, module.method.online, 0.5)
    reverted = TorchSyncBatchNorm().revert(module)  # what DDP's teardown does after training
    assert not any(t is nn.SyncBatchNorm for t in _norm_layers(reverted).values())
    PretrainModule(cfg, fmnist_small).load_state_dict(reverted.state_dict())


def test_sync_batchnorm_one_process_is_a_no_op(tmp_path, fmnist_small, monkeypatch):
    """The engine hands ``sync_batchnorm`` to Lightning; with one process Lightning converts nothing."""
    import lightning

    from relssl.engine import pretrain

    seen: dict = {}

    class SpyTrainer(lightning.Trainer):
        def __init__(self, *args, **kwargs):
            seen["sync_batchnorm"] = kwargs.get("sync_batchnorm")
            super().__init__(*args, **kwargs)

    class Record(lightning.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["norms"] = set(_norm_layers(pl_module).values())

    monkeypatch.setattr(lightning, "Trainer", SpyTrainer)
    cfg = tiny_config("simclr", tmp_path, "trainer.sync_batchnorm=true", "optim.max_steps=2", "optim.epochs=1",
                      "trainer.knn_every=0", "trainer.knn_at_start=false", "name=one")
    res = pretrain(cfg, splits=fmnist_small, quiet=True, extra_callbacks=[Record()])
    assert seen["sync_batchnorm"] is True
    assert nn.SyncBatchNorm not in seen["norms"] and nn.BatchNorm2d in seen["norms"]
    assert res["steps"] == 2 and (tmp_path / "one" / "checkpoints" / "last.ckpt").is_file()
