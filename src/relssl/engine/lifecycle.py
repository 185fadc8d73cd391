"""A run directory's life around ``fit``: history that survives resumes, clean stops on signals.

* :class:`AppendingCSVLogger`: Lightning's CSV logger deletes ``metrics.csv`` when its directory is
  not empty, which on ``--resume`` destroyed the history of the run; this one appends to it (and
  keeps its columns).
* :class:`GracefulStop` and :class:`InterruptCheckpoint`: SIGTERM and SIGINT end the run at the next
  step boundary with a resumable checkpoint (the caller then writes ``results.json`` saying so and
  exits 143 / 130).
* :func:`write_json_atomic`: results files are replaced atomically, never left half-written.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from relssl.errors import CheckpointError


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, minus the deletion of an existing ``metrics.csv``: rows are
    appended after the existing ones and the existing columns are kept (new ones extend the header)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path) and os.path.getsize(self.metrics_file_path) > 0:
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (see :class:`_AppendingWriter`)."""

    @property
    def experiment(self) -> _FabricWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}; free disk space or choose a writable "
                              "output_dir") from err


class GracefulStop:
    """SIGTERM and SIGINT during ``fit`` end the run at the next step boundary.

    Lightning already turns SIGTERM into a stop after the current step (``SIGTERMException``,
    broadcast to every rank under DDP); SIGINT (Ctrl-C) is routed the same way instead of
    Lightning's KeyboardInterrupt, which would leave no checkpoint of the steps since the last one.
    Used as a context manager around ``trainer.fit``; remembers which signal came.
    """

    def __init__(self, trainer) -> None:
        self.trainer, self.signum, self._previous = trainer, signal.SIGTERM, None

    def _on_sigint(self, signum, frame) -> None:
        self.signum = signal.SIGINT
        if self.trainer.received_sigterm:  # a second Ctrl-C while stopping: stop now
            raise KeyboardInterrupt
        self.trainer._signal_connector.received_sigterm = True

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: leave Ctrl-C to Python
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def describe(self, trainer) -> dict:
        return {"signal": signal.Signals(self.signum).name, "signum": int(self.signum),
                "step": trainer.global_step, "epoch": trainer.current_epoch}


class InterruptCheckpoint(L.Callback):
    """On a stop by signal, write ``last.ckpt`` at the step where training stopped (resumable
    mid-epoch: the module records how many batches of the epoch were trained)."""

    def __init__(self, path: Path, stop: GracefulStop) -> None:
        self.path, self.stop = path, stop

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)
