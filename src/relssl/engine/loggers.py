"""Experiment loggers (``trainer.loggers``): Lightning's own CSV, TensorBoard, MLflow and W&B loggers.

Every logger gets the run's config (as hyperparameters), every logged number (loss, lr, the
monitor's kNN / RankMe, diagnostics) and, at the end, the run's results as ``final/<key>``
(``results.json`` holds them for the CSV side). ``metrics.csv`` is always written: ``relssl
report``, ``compare.py`` and a resume read it. The ids of the MLflow run and the W&B run go to
``RUN_DIR/loggers.json``, so that a resumed run goes on in the same experiment run and
:func:`log_to_run` adds the results of ``relssl eval ...`` to it.

* ``mlflow`` (``pip install 'relssl[mlflow]'``): experiment ``trainer.experiment``, run name = the
  run directory's name, tracking URI ``trainer.mlflow_uri`` (default: a file store in
  ``OUTPUT_DIR/mlruns``; MLflow keeps its file store in maintenance mode and asks for an opt-in,
  which relssl gives for ``file:`` URIs; a server or database URI works as MLflow allows).
* ``wandb`` (``pip install 'relssl[wandb]'``): project ``trainer.experiment``, files under the run
  directory; ``trainer.wandb_offline: true`` (or ``WANDB_MODE=offline``) needs no network and is
  uploaded later with ``wandb sync RUN_DIR/wandb/offline-run-*``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from relssl.config import Config
from relssl.engine.lifecycle import AppendingCSVLogger, WriteCheckedTensorBoardLogger, write_json_atomic

IDS_FILE = "loggers.json"


def mlflow_uri(cfg: Config) -> str:
    uri = cfg.trainer.mlflow_uri or (Path(cfg.output_dir).expanduser().resolve() / "mlruns").as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module docstring
    return uri


def _ids(run_dir: Path) -> dict:
    path = Path(run_dir) / IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def build_loggers(cfg: Config, run_dir: Path) -> list:
    """The run's loggers; a resumed run (``loggers.json`` present) continues its MLflow and W&B runs."""
    ids = _ids(run_dir)
    names = cfg.trainer.loggers
    loggers: list = [AppendingCSVLogger(run_dir, name="", version="")]
    if "tensorboard" in names:
        loggers.append(WriteCheckedTensorBoardLogger(run_dir, name="tb", version=""))
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name=cfg.trainer.experiment, tracking_uri=mlflow_uri(cfg),
                                    run_name=Path(run_dir).name, run_id=ids.get("mlflow", {}).get("run_id")))
    if "wandb" in names:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.trainer.experiment, name=Path(run_dir).name, save_dir=str(run_dir),
                                   id=ids.get("wandb", {}).get("id"), offline=cfg.trainer.wandb_offline,
                                   resume="allow", log_model=False))
    return loggers


def record_ids(run_dir: Path, loggers: list) -> None:
    """Write ``loggers.json``: where each experiment tracker keeps this run (rank 0 only)."""
    ids = {}
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "MLFlowLogger":
            ids["mlflow"] = {"run_id": logger.run_id, "experiment_id": logger.experiment_id,
                             "tracking_uri": logger._tracking_uri}
        elif kind == "WandbLogger":
            logger.experiment  # noqa: B018 - starts the W&B run, which gives it its id
            ids["wandb"] = {"id": logger.version, "project": logger._project, "save_dir": logger.save_dir,
                            "offline": logger._offline}
    if ids:
        write_json_atomic(Path(run_dir) / IDS_FILE, ids)


def numbers(results: dict, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a results dict, flattened to ``a/b/c`` keys (lists, strings,
    booleans and ``_`` keys left out)."""
    out = {}
    for key, value in results.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_final(loggers: list, results: dict) -> None:
    """The run's results as ``final/<key>`` to every logger but CSV (``results.json`` is its record)."""
    metrics = numbers({k: v for k, v in results.items() if not k.endswith("history")}, "final/")
    for logger in loggers:
        if not isinstance(logger, AppendingCSVLogger):
            logger.log_metrics(metrics, step=results.get("steps"))
            logger.save()
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()  # flush: Lightning leaves the W&B run open after fit


def log_to_run(run_dir: Path, cfg: Config, results: dict, prefix: str) -> list[str]:
    """Add an evaluation's numbers (``<prefix>/<key>``) to the run's experiment trackers: the MLflow
    run and the W&B run recorded in ``loggers.json``, and the TensorBoard events. Returns the
    trackers written to."""
    metrics = numbers(results, f"{prefix}/")
    ids, names, done = _ids(run_dir), cfg.trainer.loggers, []
    if not metrics:
        return done
    if "mlflow" in names and "mlflow" in ids:
        from mlflow.tracking import MlflowClient

        mlflow_uri(cfg)  # the file-store opt-in
        client = MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"])
        for key, value in metrics.items():
            client.log_metric(ids["mlflow"]["run_id"], key, value)
        done.append("mlflow")
    if "wandb" in names and "wandb" in ids:
        import wandb

        w = ids["wandb"]
        run = wandb.init(id=w["id"], project=w["project"], dir=w["save_dir"], resume="allow",
                         mode="offline" if w["offline"] else None)
        run.log(metrics)
        run.finish()
        done.append("wandb")
    if "tensorboard" in names:
        tb = WriteCheckedTensorBoardLogger(run_dir, name="tb", version="")
        tb.log_metrics(metrics)
        tb.finalize("success")
        done.append("tensorboard")
    return done
