import re
import subprocess
import sys

import pytest

from relssl.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "relssl", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_methods_and_datasets():
    out = run_cli("--help")
    assert out.returncode == 0
    for word in ("pretrain", "eval", "demo", "simclr", "mocov2", "byol", "fashion_mnist", "fashion_mnist/mocov2"):
        assert word in out.stdout


@pytest.mark.parametrize("args, message", [
    (["pretrain", "fashion_mnist/mocov2", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["pretrain", "nope/none"], "no config file 'nope/none'"),
    (["pretrain"], "pretrain needs a config"),
    (["eval", "knn", "/nonexistent/run"], "does not exist"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relssl: error: ") and message in err and "\n" not in err


def test_pretrain_and_eval_cli(tmp_path, capsys):
    rc = main(["pretrain", "fashion_mnist/simclr", "backbone.name=convnet_tiny", "backbone.bn_splits=1",
               "data.subset=256", "data.bank_subset=500", "data.test_subset=200", "optim.batch_size=64",
               "optim.epochs=1", "optim.warmup_epochs=0", "method.proj_hidden=32", "method.proj_dim=16",
               "trainer.knn_every=1", "trainer.progress_bar=false", "trainer.accelerator=cpu",
               f"output_dir={tmp_path}", "name=cli"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"run directory: {tmp_path}/cli" in out and "kNN top-1" in out
    assert main(["eval", "knn", str(tmp_path / "cli"), "--k", "20", "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert res["bank"] == 500 and res["test"] == 200 and 10.0 < res["top1"] <= 100.0


def test_demo_prints_result_and_baselines(tmp_path, capsys):
    from relssl.cli.demo import run_demo

    rc = run_demo("simclr", "cpu", ["backbone.name=convnet_tiny", "data.subset=256", "data.bank_subset=500",
                                     "data.test_subset=200", "optim.batch_size=64", "optim.epochs=1",
                                     "optim.warmup_epochs=0", "method.proj_hidden=32", "method.proj_dim=16",
                                     "trainer.progress_bar=false", f"output_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "relssl demo = relssl pretrain fashion_mnist/simclr" in out
    for line in ("raw pixels (mean-centred)", "random-init convnet_tiny", "simclr after 1 epochs", "simclr - raw pixels",
                 "run directory:"):
        assert line in out, out
    pix = float(re.search(r"raw pixels \(mean-centred\)\s+([\d.]+)%", out).group(1))
    trained = float(re.search(r"simclr after 1 epochs\s+([\d.]+)%", out).group(1))
    margin = float(re.search(r"simclr - raw pixels\s+([+-][\d.]+) points", out).group(1))
    assert margin == pytest.approx(trained - pix, abs=0.011)
    assert ("no better than the input yet" in out) == (trained <= pix)
