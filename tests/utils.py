"""Shared helpers of the end-to-end tests: a tiny, fast configuration of any packaged recipe."""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from relssl.config import resolve_recipe
from relssl.config import load_config

# tiny conv net, batch 64, kNN every epoch with k=20, log every step, CPU
TINY = ["backbone.name=convnet_tiny", "backbone.bn_splits=1", "optim.batch_size=64", "optim.warmup_epochs=0",
        "trainer.knn_every=1", "trainer.knn_k=20", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
        "trainer.accelerator=cpu"]

# small heads (and queues) per method, so a step costs milliseconds; methods add themselves here
SMALL_HEADS = {
    "simclr": ["method.proj_hidden=64", "method.proj_dim=32"],
    "mocov2": ["method.proj_hidden=64", "method.proj_dim=32", "method.queue_size=256"],
    "byol": ["method.proj_hidden=64", "method.proj_dim=32", "method.pred_hidden=64"],
    # relational distillation starts from near-collapsed embeddings: it needs the warm-up its recipes have
    "msvq": ["method.proj_hidden=64", "method.proj_dim=32", "method.queue_size=256", "optim.warmup_epochs=1"],
    "ressl": ["method.proj_hidden=64", "method.proj_dim=32", "method.queue_size=256", "optim.warmup_epochs=1"],
    "msf": ["method.proj_hidden=64", "method.proj_dim=32", "method.pred_hidden=64", "method.queue_size=256"],
    "wcl": ["method.proj_hidden=64", "method.proj_dim=32"],
    "nnclr": ["method.proj_hidden=64", "method.proj_dim=32", "method.pred_hidden=64", "method.queue_size=256"],
    "pnnclr": ["method.enc_hidden=64", "method.enc_dim=64", "method.proj_hidden=64", "method.proj_dim=32",
               "method.pred_hidden=64", "method.queue_size=256"],
}


def tiny_config(method, tmp_path, *extra, recipe=None, heads=None):
    """The packaged Fashion-MNIST recipe of ``method`` shrunk by TINY and the method's small heads."""
    heads = SMALL_HEADS.get(method, []) if heads is None else list(heads)
    return load_config(resolve_recipe(recipe or f"fashion_mnist/{method}"),
                       TINY + heads + [f"output_dir={tmp_path}"] + list(extra))


def read_metrics(run_dir):
    with open(f"{run_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def digest(root: Path) -> dict:
    """sha256 of every file under ``root``: "nothing changed" is ``digest(root) == before``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def cli(*args):
    """``relssl ARGS`` as a real process (``python -m relssl``), stderr captured."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "relssl", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, text=True)


def fill(disk: Path) -> Path:
    """Write zeros into ``disk`` until it is full; the file that filled it."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler
