"""Experiment loggers (trainer.loggers): MLflow with a local file store and W&B offline, for real.

One tiny run logs to csv, TensorBoard, MLflow and W&B; the test reads back what each tracker
stored (MLflow through its client, W&B by decoding the offline run file) and checks the config,
the monitor's numbers, the final results and an evaluation's numbers added afterwards."""

import json
import struct
import time
from pathlib import Path

import pytest

from relssl.cli import main
from relssl.engine import pretrain
from relssl.errors import ConfigError

from utils import tiny_config

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'relssl[mlflow]')")
wandb = pytest.importorskip("wandb", reason="the wandb extra (pip install 'relssl[wandb]')")


def wandb_records(run_file: Path):
    """The protobuf records of a W&B offline run file (a LevelDB-style log: 7-byte header, then
    records of checksum (4), length (2), type (1: whole, 2 / 3 / 4: first / middle / last part) in
    32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, part = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part + chunk if kind == 4 else chunk)
            part = b""
            yield record
        elif kind in (2, 3):
            part = chunk if kind == 2 else part + chunk


def wandb_logged(run_dir: Path) -> tuple[dict, dict]:
    """(config, every history key -> its values in order) over all offline runs in ``run_dir/wandb``."""
    config, history = {}, {}
    for run_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for r in wandb_records(run_file):
            kind = r.WhichOneof("record_type")
            if kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                for item in r.history.item:
                    history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
    return config, history


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, fmnist_small):
    tmp = tmp_path_factory.mktemp("loggers")
    cfg = tiny_config("simclr", tmp, "optim.epochs=2", "name=tracked", "trainer.loggers=[csv,tensorboard,mlflow,wandb]",
                      f"trainer.mlflow_uri={(tmp / 'mlruns').as_uri()}", "trainer.wandb_offline=true",
                      "trainer.experiment=relssl-tests")
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    return Path(res["run_dir"]), res


def test_mlflow_holds_the_config_the_monitor_and_the_results(logged_run):
    run_dir, res = logged_run
    ids = json.loads((run_dir / "loggers.json").read_text())
    client = mlflow.tracking.MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"])
    run = client.get_run(ids["mlflow"]["run_id"])
    assert run.info.run_name == "tracked"
    assert client.get_experiment(run.info.experiment_id).name == "relssl-tests"
    params = run.data.params
    assert params["config/method/name"] == "simclr" and params["config/optim/epochs"] == "2"
    knn = [m.value for m in client.get_metric_history(run.info.run_id, "knn_top1")]
    assert knn == pytest.approx([h["top1"] for h in res["knn_history"]], abs=1e-3)
    assert run.data.metrics["final/knn_last_top1"] == pytest.approx(res["knn_last_top1"])
    assert run.data.metrics["final/steps"] == res["steps"] and "loss" in run.data.metrics


def test_wandb_offline_holds_the_config_the_monitor_and_the_results(logged_run):
    run_dir, res = logged_run
    # W&B's service process writes the run's log file; under load (CI, 2 cores) its config record has
    # been seen to land after the run's finish() returned: read again for up to 30 s before judging
    t0 = time.time()
    config, history = wandb_logged(run_dir)
    while "config" not in config and time.time() - t0 < 30:
        time.sleep(0.5)
        config, history = wandb_logged(run_dir)
    assert config["config"]["method"]["name"] == "simclr"
    assert history["knn_top1"] == pytest.approx([h["top1"] for h in res["knn_history"]], abs=1e-3)
    assert history["final/knn_last_top1"] == [pytest.approx(res["knn_last_top1"])]
    assert "loss" in history


def test_eval_results_join_the_same_experiment_runs(logged_run, fmnist_small, monkeypatch, capsys):
    run_dir, _ = logged_run
    monkeypatch.setattr("relssl.evaluate.checkpoint.load_data", lambda *a, **k: fmnist_small)
    assert main(["eval", "knn", str(run_dir), "--k", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["logged_to"] == ["mlflow", "wandb", "tensorboard"]
    ids = json.loads((run_dir / "loggers.json").read_text())
    metrics = mlflow.tracking.MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"]).get_run(
        ids["mlflow"]["run_id"]).data.metrics
    assert metrics["eval/knn/top1"] == pytest.approx(out["top1"])
    assert metrics["eval/knn/baselines/pixels/weighted/top1"] == pytest.approx(out["baselines"]["pixels"]["weighted"]["top1"])
    _, history = wandb_logged(run_dir)
    assert history["eval/knn/top1"] == [pytest.approx(out["top1"])]
    # the W&B run continued is the same run (one id)
    assert {p.name.rsplit("-", 1)[-1] for p in run_dir.glob("wandb/offline-run-*")} == {ids["wandb"]["id"]}


@pytest.mark.parametrize("value, message", [
    ("[csv,comet]", "unknown logger 'comet'"),
    ("[tensorboard]", "must include csv"),
    ("[csv,csv]", "lists a logger twice"),
])
def test_logger_config_errors(value, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        tiny_config("simclr", tmp_path, f"trainer.loggers={value}")


def test_a_resumed_run_continues_the_same_tracker_runs(logged_run):
    """The loggers a resume builds (the run directory has loggers.json) point at the recorded runs."""
    from relssl.config import config_from_dict, read_yaml
    from relssl.engine.loggers import build_loggers

    run_dir, _ = logged_run
    ids = json.loads((run_dir / "loggers.json").read_text())
    loggers = {type(lg).__name__: lg for lg in build_loggers(config_from_dict(read_yaml(run_dir / "config.yaml")), run_dir)}
    assert set(loggers) == {"AppendingCSVLogger", "WriteCheckedTensorBoardLogger", "MLFlowLogger", "WandbLogger"}
    assert loggers["MLFlowLogger"].run_id == ids["mlflow"]["run_id"]
    assert loggers["WandbLogger"].version == ids["wandb"]["id"]
