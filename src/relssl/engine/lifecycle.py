"""A run directory's life around ``fit``: history that survives resumes, clean stops on signals.

* :class:`AppendingCSVLogger`: Lightning's CSV logger deletes ``metrics.csv`` when its directory is
  not empty, which on ``--resume`` destroyed the history of the run; this one appends to it (and
  keeps its columns). It and :class:`WriteCheckedTensorBoardLogger` turn a failed write (full
  disk) into one line naming the file.
* :class:`GracefulStop` and :class:`InterruptCheckpoint`: SIGTERM and SIGINT end the run at the next
  step boundary with a resumable checkpoint (the caller then writes ``results.json`` saying so and
  exits 143 / 130).
* :func:`write_json_atomic`: results files are replaced atomically, never left half-written.
* :func:`check_resumable`: a resume that cannot proceed (finished run, config.yaml edited to
  another method or budget) is refused before anything in the run directory changes.
* :class:`RunLock`: one process per run directory; a stale lock (its process is gone) is taken over.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import signal
import threading
from pathlib import Path

import lightning as L
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricWriter
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from relssl.config import config_from_dict
from relssl.errors import AlreadyFinished, CheckpointError, ConfigError, RelsslError
from relssl.fileio import atomic_write_text


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, minus the deletion of an existing ``metrics.csv``: rows are
    appended after the existing ones and the existing columns are kept (new ones extend the header)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path) and os.path.getsize(self.metrics_file_path) > 0:
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))


    def save(self) -> None:
        try:
            super().save()
        except OSError as err:
            self.metrics = []  # dropped, so that teardown does not fail on them a second time
            raise CheckpointError(f"cannot write {self.metrics_file_path}: {err.strerror or err}; free disk space or "
                                  "choose a writable output_dir (the rows written so far and the checkpoints are kept)"
                                  ) from err

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """New columns: rewrite the file with the wider header atomically (Lightning truncates it
        first, which a full disk turns into an empty history)."""
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, out.getvalue())


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (see :class:`_AppendingWriter`)."""

    @property
    def experiment(self) -> _FabricWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def write_json_atomic(path: Path, data: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(data, indent=2))
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}; free disk space or choose a writable "
                              "output_dir") from err


class GracefulStop:
    """SIGTERM, SIGINT and SIGUSR1 end the run at a step boundary, on every process at the same step.

    Used as a context manager around ``trainer.fit`` (signals before training starts) and as the
    callback that owns the signals while it trains: their handlers only record the signal (and
    forward it to the processes Lightning launched, as Lightning does for SIGTERM); after every
    step the processes agree whether any of them got one (an all-reduce of one flag, under DDP
    only), and all of them then stop after that same step, where :class:`InterruptCheckpoint`
    writes the checkpoint. Lightning's own SIGTERM handler runs a collective inside the signal
    handler, which hangs a job whose processes are all signalled (as SLURM does) at different
    moments: it is replaced while training. SIGUSR1 is what SLURM sends before a time limit with
    ``#SBATCH --signal=USR1@90``; a second Ctrl-C while stopping stops at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, trainer) -> None:
        self.trainer, self.signum, self.pending, self._previous = trainer, signal.SIGTERM, None, {}

    def _on_signal(self, signum, frame) -> None:
        if self.pending is not None and signum == signal.SIGINT:  # a second Ctrl-C while stopping: now
            raise KeyboardInterrupt
        if self.pending is None:
            self.pending = self.signum = signum
            launcher = getattr(self.trainer.strategy, "launcher", None)
            if signum != signal.SIGINT and launcher is not None:  # (Ctrl-C reaches the whole process group)
                launcher.kill(signum)
        if not (self.trainer.world_size > 1):  # one process: stop after this step (Lightning's flag)
            self.trainer._signal_connector.received_sigterm = True

    def install(self) -> None:
        for sig in self.SIGNALS:
            try:
                previous = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave the signals to Python
                return
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def agree(self) -> None:
        """After a step: every process stops after it if any process got a signal (one all-reduce)."""
        stop = self.pending is not None
        if self.trainer.world_size > 1:
            stop = self.trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.trainer._signal_connector.received_sigterm = True

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def describe(self, trainer) -> dict:
        return {"signal": signal.Signals(self.signum).name, "signum": int(self.signum),
                "step": trainer.global_step, "epoch": trainer.current_epoch}


class InterruptCheckpoint(L.Callback):
    """While training, :class:`GracefulStop` owns the signals (Lightning registers its own when fit
    starts); on a stop by signal, write ``last.ckpt`` at the step where training stopped (resumable
    mid-epoch: the module records how many batches of the epoch were trained)."""

    def __init__(self, path: Path, stop: GracefulStop) -> None:
        self.path, self.stop = path, stop

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop.install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stop.agree()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)


# config sections a resume must not change (trainer settings, names and paths may change)
RESUME_FIXED = ("seed", "data", "backbone", "method", "plugins", "views", "augment", "optim")


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")] if a != b else []


def _with_defaults(saved: dict) -> dict:
    """A checkpoint's config with the defaults of this version filled in, so that a key added since
    (``backbone.kwargs``, ``optim.betas``) is not taken for a change; as saved if it no longer validates."""
    if not saved:
        return saved
    try:
        return config_from_dict(copy.deepcopy(saved)).to_dict()
    except RelsslError:
        return saved


def check_resumable(ckpt: dict, module, cfg_dict: dict, run_dir: Path, total_steps: int) -> None:
    """Refuse a resume that cannot continue this run, before anything in ``run_dir`` changes.

    Raises :class:`AlreadyFinished` when the checkpoint is the end of training, and
    :class:`ConfigError` when ``config.yaml`` no longer describes the checkpoint's run (another
    method, other tensors, or a changed training recipe).
    """
    saved = _with_defaults(((ckpt.get("hyper_parameters") or {}).get("config")) or {})
    if saved:
        changed = [k for section in RESUME_FIXED for k in _differences(saved.get(section), cfg_dict.get(section), f"{section}.")]
        was_opt, now_opt = saved.get("optim") or {}, cfg_dict.get("optim") or {}
        t_was, t_now = saved.get("trainer") or {}, cfg_dict.get("trainer") or {}
        g_was = was_opt.get("batch_size", 0) * t_was.get("devices", 1) * t_was.get("num_nodes", 1)
        g_now = now_opt.get("batch_size", 0) * t_now.get("devices", 1) * t_now.get("num_nodes", 1)
        if g_was != g_now:
            raise ConfigError(f"cannot resume {run_dir} on {t_now.get('devices', 1) * t_now.get('num_nodes', 1)} "
                              f"process(es): the global batch would change from {g_was} to {g_now}; start runs that "
                              "may move between numbers of devices with optim.global_batch_size")
        if "optim.batch_size" in changed:  # another number of processes, the same global batch
            changed.remove("optim.batch_size")
        if changed:
            was, now = (saved.get("method") or {}).get("name"), (cfg_dict.get("method") or {}).get("name")
            what = (f"config.yaml says method {now} but the checkpoint is a {was} run" if was != now
                    else f"config.yaml changed {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} since the checkpoint")
            raise ConfigError(f"cannot resume {run_dir}: {what}; restore the run's config.yaml or start a new run")
    own, theirs = module.state_dict(), ckpt.get("state_dict") or {}
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    reshaped = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise ConfigError(f"cannot resume {run_dir}: its checkpoint does not fit the model config.yaml builds "
                          f"({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} reshaped tensors, "
                          f"e.g. {example}); restore the run's config.yaml or start a new run")
    step = int(ckpt.get("global_step", 0))
    if step >= total_steps:
        raise AlreadyFinished(f"run {run_dir} already finished ({step} steps); nothing to resume, nothing changed")


class RunLock:
    """An exclusive lock on a run directory (``.lock`` holding the owner's PID), released on exit.

    A second run or resume of the same directory is refused with one line; a lock whose process no
    longer exists (a killed run) is stale and taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def acquire(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise ConfigError(f"run directory {self.path.parent} is in use by process {pid}; wait for it "
                                      f"to end or stop it (a stale lock of a dead process is taken over)") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as err:
                raise CheckpointError(f"cannot write {self.path}: {err.strerror or err}; free disk space or choose "
                                      "a writable output_dir") from err
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise ConfigError(f"cannot lock run directory {self.path.parent}; remove {self.path} if no run uses it")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriteCheckedTensorBoardLogger(TensorBoardLogger):
    """``TensorBoardLogger`` whose write failures (a full disk, a quota: raised from its writer thread
    at the next call) end the run with one line naming the directory, not a traceback."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _quiet_writer_thread_errors()

    def _checked(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as err:
            raise CheckpointError(f"cannot write TensorBoard events in {self.log_dir}: {err.strerror or err}; free "
                                  "disk space or choose a writable output_dir (the checkpoints are kept)") from err

    def log_metrics(self, metrics, step=None) -> None:
        self._checked(super().log_metrics, metrics, step)

    def log_hyperparams(self, params, metrics=None) -> None:
        self._checked(super().log_hyperparams, params, metrics)

    def save(self) -> None:
        self._checked(super().save)

    def finalize(self, status: str) -> None:
        self._checked(super().finalize, status)


def _quiet_writer_thread_errors() -> None:
    """TensorBoard's writer thread prints a traceback when a write fails before the main thread sees
    the error; the main thread reports it (one line), so that print is dropped. Installed once."""
    previous = threading.excepthook
    if getattr(previous, "_relssl", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook._relssl = True
    threading.excepthook = hook
