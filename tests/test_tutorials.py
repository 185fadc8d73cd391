"""The tutorials run as written: docs/tutorials/own-images.md on a small folder of images written
here (its commands, shrunk by appended overrides to a tiny net and a few steps; its Python as is)."""

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from relssl.cli import main

from dataset_files import save_image

DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "own-images.md"
SHRINK = ["backbone.name=convnet_tiny", "backbone.bn_splits=1", "data.image_size=32", "data.crop_size=32",
          "optim.batch_size=16", "optim.epochs=1", "optim.warmup_epochs=0", "method.queue_size=64",
          "method.proj_hidden=32", "method.proj_dim=16", "trainer.progress_bar=false", "trainer.accelerator=cpu",
          "trainer.monitor_subset=32"]


def _blocks(kind):
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_own_images_tutorial(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(48):  # three kinds of image, nested folders, as a user's folder might be
        base = np.zeros((3, 40, 40), dtype=np.uint8)  # channels first, as save_image takes it
        base[i % 3] = 200
        noisy = np.clip(base + rng.integers(0, 50, base.shape), 0, 255).astype(np.uint8)
        save_image(photos / f"batch{i % 2}" / f"img{i:02d}.png", noisy)
    monkeypatch.chdir(tmp_path)
    commands = [shlex.split(c.replace("/data/photos", str(photos))) for c in _blocks("") if c.startswith("relssl")]
    pretrain_cmd, embed_cmd = commands[0], commands[1]
    assert pretrain_cmd[:3] == ["relssl", "pretrain", "stl10/mocov2"]
    assert main(pretrain_cmd[1:] + SHRINK + [f"output_dir={tmp_path / 'runs'}"]) == 0
    run = tmp_path / "runs" / "photos"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "results.json").is_file()
    embed_cmd = [a.replace("runs/photos", str(run)) for a in embed_cmd]
    assert main(embed_cmd[1:] + ["data.image_size=32"]) == 0
    data = np.load(tmp_path / "photos.npz")
    assert data["embeddings"].shape[0] == 48 and np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)
    capsys.readouterr()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_blocks("python")[0], str(DOC), "exec"), {})
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 5 and all(os.path.isfile(line.split(maxsplit=1)[1]) for line in lines)
    assert not any(line.endswith(str(data["paths"][0])) for line in lines)  # the query itself is left out
