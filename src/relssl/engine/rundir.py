"""A run directory: where a run starts (fresh or resumed), who writes it, and its file log.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/`` (``last.ckpt``,
``best.ckpt``), ``metrics.csv``, ``tb/`` (TensorBoard events), ``log.txt``, ``.lock`` while a
process trains in it and, at the end, ``results.json``. Only global rank 0 writes it.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from relssl.config import Config, apply_overrides, config_from_dict, dump_config, read_yaml
from relssl.engine.checkpoint import load_checkpoint_file
from relssl.engine.lifecycle import RunLock
from relssl.errors import ConfigError
from relssl.fileio import resume_paths

# rank 0's run directory, handed to the processes Lightning's launcher starts (they re-run the command)
RUN_DIR_ENV = "RELSSL_RUN_DIR"
# where launchers announce a process's rank before any process group exists (Lightning, torchrun, SLURM, LSF)
_RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


@dataclass
class ResumePoint:
    """An interrupted run to continue: its directory, checkpoint (read and checked) and saved config."""

    run_dir: Path
    ckpt_path: Path
    ckpt: dict
    cfg: Config


def read_resume(resume: str | Path, overrides: list[str] | None = None) -> ResumePoint:
    """``--resume`` of a run directory or a checkpoint file, refused with one line before any work.

    ``overrides``: ``trainer.*`` settings for the resumed process (another number of devices or
    nodes, threads, loggers...); anything else would change the run and is refused."""
    run_dir, ckpt_path = resume_paths(resume)
    bad = [o for o in overrides or [] if not o.startswith("trainer.")]
    if bad:
        raise ConfigError(f"--resume continues a run with its saved config: only trainer.* settings may change, "
                          f"got {bad[0]}")
    ckpt = load_checkpoint_file(ckpt_path)  # a corrupt checkpoint fails here, before anything is written
    raw = apply_overrides(read_yaml(run_dir / "config.yaml"), list(overrides or []))
    return ResumePoint(run_dir, ckpt_path, ckpt, config_from_dict(raw))


def launched_as_rank_zero(cfg: Config) -> bool:
    """Whether this process is global rank 0 of its run, judged from the launcher's environment.

    Only rank 0 creates and writes the run directory (``config.yaml``, ``log.txt``, checkpoints,
    logs, ``results.json``). A single-process run is always rank 0, whatever the environment.
    """
    if cfg.trainer.devices * cfg.trainer.num_nodes == 1:
        return True
    for key in _RANK_ENV:
        value = os.environ.get(key, "").strip()
        if value.isdigit() and int(value) != 0:
            return False
    return True


def make_run_dir(cfg: Config) -> Path:
    """A new directory ``output_dir/name`` (``<dataset>-<method>-<time>`` by default; ``-2``, ... if taken)."""
    name = cfg.name or f"{cfg.data.dataset}-{cfg.method['name']}-{datetime.now():%Y%m%d-%H%M%S}"
    base = Path(cfg.output_dir).expanduser()
    run_dir = base / name
    n = 2
    while run_dir.exists():
        run_dir = base / f"{name}-{n}"
        n += 1
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"cannot create run directory {run_dir}: {err.strerror}; set output_dir to a writable place") from err
    return run_dir


def open_run_dir(cfg: Config, resume: ResumePoint | None, rank_zero: bool) -> tuple[Path, RunLock | None]:
    """This process's run directory and, on rank 0, the lock it holds while training there.

    A fresh run: rank 0 creates the directory and writes ``config.yaml``. Another rank does not
    write: Lightning's launcher passes rank 0's directory on (``RELSSL_RUN_DIR``); under an external
    launcher (SLURM, torchrun) the guess is only a placeholder, and the checkpoint callbacks take
    rank 0's directory when the processes meet."""
    if resume is not None:
        return resume.run_dir, RunLock(resume.run_dir).acquire() if rank_zero else None
    if not rank_zero:
        return Path(os.environ.get(RUN_DIR_ENV) or Path(cfg.output_dir).expanduser() / (cfg.name or "unnamed")), None
    run_dir = make_run_dir(cfg)
    lock = RunLock(run_dir).acquire()
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return run_dir, lock


@contextmanager
def run_dir_announced(run_dir: Path, rank_zero: bool):
    """Rank 0 sets ``RELSSL_RUN_DIR`` while it trains (the processes Lightning launches re-run the
    command and take rank 0's directory from it); the previous value comes back afterwards."""
    previous = os.environ.get(RUN_DIR_ENV)
    if rank_zero:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if rank_zero:
            if previous is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = previous


@contextmanager
def file_log(run_dir: Path, enabled: bool):
    """``relssl`` and Lightning log records go to ``run_dir/log.txt`` while the block runs (rank 0)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("relssl", "lightning.pytorch"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for name in ("relssl", "lightning.pytorch"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model and its widest vector instructions (``AMD EPYC, x86_64, AVX2``), as far as the
    system tells: two machines that both say ``x86_64`` can differ twofold in training speed."""
    model, isa = "", ""
    try:
        info = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not isa:
            flags = set(value.split())
            isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "")
    return ", ".join(p for p in (model or platform.processor(), platform.machine(), isa) if p)


def environment() -> dict:
    """The software and machine a run used (written into ``results.json``)."""
    import lightning
    import torchvision

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "lightning": lightning.__version__, "device": dev, "cpus": os.cpu_count(),
            "date": datetime.now().isoformat(timespec="seconds")}
