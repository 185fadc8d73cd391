"""relssl export: the backbone as safetensors, loadable by plain torchvision and by relssl."""

import json
import os

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from relssl.cli import main
from relssl.config import config_from_dict
from relssl.data import DatasetSplits
from relssl.engine import pretrain
from relssl.evaluate.checkpoint import load_method
from relssl.evaluate.export import export_backbone, load_backbone, read_metadata, torchvision_backbone
from relssl.errors import CheckpointError

from utils import tiny_config


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, fmnist_small):
    """A ResNet-18 (CIFAR stem, 1 channel, SplitBatchNorm with 2 groups) after one SimCLR step."""
    tmp = tmp_path_factory.mktemp("resnet")
    splits = DatasetSplits(info=fmnist_small.info, pretrain=fmnist_small.pretrain.subset(16, seed=0),
                           bank=fmnist_small.bank.subset(20, seed=0), test=fmnist_small.test.subset(10, seed=0))
    cfg = tiny_config("simclr", tmp, "backbone.name=resnet18", "backbone.bn_splits=2", "optim.batch_size=8",
                      "optim.max_steps=1", "optim.epochs=1", "trainer.knn_every=0", "trainer.knn_at_start=false",
                      "name=r18")
    res = pretrain(cfg, splits=splits, quiet=True)
    return res["run_dir"], splits


@pytest.fixture(scope="module")
def exported(resnet_run, tmp_path_factory):
    run_dir, splits = resnet_run
    return export_backbone(run_dir, tmp_path_factory.mktemp("export") / "r18.safetensors", splits=splits)


@pytest.fixture(scope="module")
def ours(resnet_run):
    """relssl's own backbone of the checkpoint, in eval mode."""
    run_dir, splits = resnet_run
    return load_method(run_dir, splits=splits)[1].backbone.eval()


def _plain_torchvision_resnet18(in_channels):
    """What docs/evaluation.md tells a user to write: torchvision only, no relssl class."""
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)  # CIFAR stem
    net.maxpool = torch.nn.Identity()  # maxpool: false
    net.fc = torch.nn.Identity()
    return net


def test_metadata_says_the_evaluation_size_and_the_whole_config(resnet_run, tmp_path):
    # 24-px crops of 28-px images: relssl evaluates the whole 28-px image (eval_image_size), and the
    # metadata must say so, not the crop size
    run_dir, splits = resnet_run
    _, meta = export_backbone(run_dir, tmp_path / "b.safetensors", splits=splits, overrides=["data.crop_size=24"])
    assert meta["input_size"] == 28
    # the file carries the run's whole config, as evaluated (with the export's data.* overrides)
    run_cfg = config_from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text())).to_dict()
    want = {**run_cfg, "data": {**run_cfg["data"], "crop_size": 24}}
    assert read_metadata(tmp_path / "b.safetensors")["config"] == json.loads(json.dumps(want))  # (tuples: lists)
    _, meta = export_backbone(run_dir, tmp_path / "c.safetensors", splits=splits, overrides=["data.eval_size=36"])
    assert meta["input_size"] == 36


def test_export_loads_into_plain_torchvision(exported, ours):
    out, meta = exported
    assert out.is_file()
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # the usual mode, not safetensors' 0600
    assert meta["backbone"] == "resnet18" and meta["in_channels"] == 1 and meta["cifar_stem"] is True
    assert meta["maxpool"] is False and meta["feat_dim"] == 512 and meta["torchvision_compatible"] is True
    assert meta["trained_bn_splits"] == 2 and meta["mean"] == [0.286] and meta["input_size"] == 32
    with safe_open(str(out), framework="pt") as f:  # the raw header holds the metadata as JSON strings
        assert f.metadata()["backbone"] == '"resnet18"'

    net = _plain_torchvision_resnet18(meta["in_channels"])
    net.load_state_dict(load_file(str(out)), strict=True)  # SplitBatchNorm keys are BatchNorm keys
    net.eval()
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net(x), ours(x)
    assert a.shape == (4, 512)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    # the helper builds the same plain torchvision module from the metadata
    tv = torchvision_backbone(meta)
    tv.load_state_dict(load_file(str(out)), strict=True)
    assert torch.allclose(tv.eval()(x), a, atol=1e-6)


def test_load_backbone_roundtrip(exported, ours):
    out, _ = exported
    net = load_backbone(out)
    assert not net.training and net.feat_dim == 512
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(net(x), ours(x), atol=1e-5, rtol=0)
    ref = ours.state_dict()
    got = net.state_dict()
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    assert read_metadata(out)["method"] == "simclr"


def test_export_cli_default_path_and_errors(resnet_run, tmp_path, capsys, monkeypatch):
    run_dir, splits = resnet_run
    monkeypatch.setattr("relssl.data.load_dataset", lambda *a, **k: splits)  # the dataset's info, no file reading
    assert main(["export", run_dir, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["file"].endswith("r18/backbone.safetensors") and meta["feat_dim"] == 512
    assert load_backbone(meta["file"]).feat_dim == 512
    # not a relssl export / not safetensors at all
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not written by relssl export"):
        load_backbone(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_metadata(junk)
    for args, message in [(["export", str(tmp_path / "nope")], "does not exist"),
                          (["export", run_dir, "-o", str(tmp_path / "x.pt")], "must end in .safetensors")]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("relssl: error: ") and message in err and "\n" not in err


# ----------------------------------------------------------------------------- ONNX

onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'relssl[onnx]')")


@pytest.fixture(scope="module")
def onnx_files(resnet_run, tmp_path_factory):
    """The ResNet-18 run exported twice: plain (normalised input, raw features) and with the
    normalisation folded in and L2-normalised output."""
    from relssl.evaluate.export import export_onnx

    run_dir, splits = resnet_run
    out = tmp_path_factory.mktemp("onnx")
    plain = export_onnx(run_dir, out / "plain.onnx", splits=splits)
    folded = export_onnx(run_dir, out / "folded.onnx", splits=splits, fold_normalization=True, l2_normalize=True)
    return plain, folded


def _run(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])


def test_onnx_features_equal_pytorch_at_any_batch_size(onnx_files, ours, resnet_run):
    """onnxruntime's features equal relssl's own (eval mode, the same images) within 1e-4 absolute
    (float32 kernels of two runtimes), for batches of 1, 5 and 12 (the batch axis is dynamic)."""
    from relssl.augment import eval_batch
    from relssl.metrics.knn import extract_features

    (plain, meta), (folded, _) = onnx_files
    _, splits = resnet_run
    images = splits.test.images[:12]
    size, mean, std = meta["input_size"], meta["mean"], meta["std"]
    reference = extract_features(ours, images, size, mean, std, device="cpu", normalize=False)
    # the model's inputs, resized to its input size as relssl's evaluation resizes: in [0, 1] for the
    # folded model, normalised for the plain one
    x01 = eval_batch(images, size, mean=[0.0], std=[1.0])
    normed = eval_batch(images, size, mean, std)
    assert x01.shape[-1] == size and 0.0 <= float(x01.min()) and float(x01.max()) <= 1.0
    for n in (1, 5, 12):
        torch.testing.assert_close(_run(plain, normed[:n]), reference[:n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_run(folded, x01[:n]), torch.nn.functional.normalize(reference[:n], dim=1),
                                   atol=1e-4, rtol=1e-4)


def test_onnx_metadata_and_cli(onnx_files, resnet_run, tmp_path, capsys, monkeypatch):
    from relssl.evaluate.export import read_onnx_metadata

    (plain, _), (folded, _) = onnx_files
    assert read_onnx_metadata(folded)["fold_normalization"] is True
    meta = read_onnx_metadata(plain)
    assert meta["format"] == "relssl-backbone" and meta["backbone"] == "resnet18" and meta["l2_normalize"] is False
    run_dir, splits = resnet_run
    monkeypatch.setattr("relssl.data.load_dataset", lambda *a, **k: splits)
    assert main(["export", run_dir, "--format", "onnx", "--l2-normalize"]) == 0
    assert "backbone.onnx (ONNX)" in capsys.readouterr().out
    for args, message in [(["export", run_dir, "--format", "onnx", "-o", str(tmp_path / "m.safetensors")],
                           "must end in .onnx"),
                          (["export", run_dir, "--l2-normalize"], "apply to --format onnx only")]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("relssl: error: ") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())  # a refused export writes nothing


def test_a_conv_net_with_its_own_widths_is_rebuilt_by_evaluation_and_export(tmp_path, fmnist_small):
    """backbone.kwargs of a built-in conv net (the CPU demo's half-width net) travel with the checkpoint."""
    splits = DatasetSplits(info=fmnist_small.info, pretrain=fmnist_small.pretrain.subset(16, seed=0),
                           bank=fmnist_small.bank.subset(20, seed=0), test=fmnist_small.test.subset(10, seed=0))
    cfg = tiny_config("simclr", tmp_path, "backbone.name=convnet_grid", "backbone.kwargs={widths: [4, 8, 12]}",
                      "optim.batch_size=8", "optim.max_steps=1", "optim.epochs=1", "trainer.knn_every=0",
                      "trainer.knn_at_start=false")
    res = pretrain(cfg, splits=splits, quiet=True)
    net = load_method(res["run_dir"], splits=splits)[1].backbone.eval()
    assert [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)] == [4, 8, 12]
    out, meta = export_backbone(res["run_dir"], tmp_path / "grid.safetensors", splits=splits)
    assert meta["arch"]["kwargs"] == {"widths": [4, 8, 12]} and meta["feat_dim"] == 12 * 4
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(load_backbone(out)(x), net(x), atol=1e-6)


# ------------------------------------------------------------------ evaluating an exported file


def test_an_exported_backbone_evaluates_like_its_run(resnet_run, exported, capsys):
    from relssl.evaluate.checkpoint import prepare

    run_dir, splits = resnet_run
    path, _ = exported
    a, b = prepare(run_dir, splits=splits), prepare(path, splits=splits)
    assert b.exported and not a.exported and b.eval_size == a.eval_size
    x = splits.test.materialize().images[:8]
    assert torch.equal(a.features(x), b.features(x))
    # the command line, on the real dataset: the same kNN from the file as from the run directory
    got = []
    for where in (run_dir, path):
        assert main(["eval", "knn", str(where), "data.bank_subset=100", "data.test_subset=50", "--no-baselines",
                     "--json", "--device", "cpu"]) == 0
        got.append(json.loads(capsys.readouterr().out)["results"])
    assert got[0] == got[1] and got[0]["weighted"]["top1"] > 0
    # relssl embed: the same embeddings from the file as from the run directory
    out = []
    for i, where in enumerate((run_dir, path)):
        dest = Path(run_dir).parent / f"emb{i}.npz"
        assert main(["embed", str(where), "--split", "test", "data.test_subset=20", "-o", str(dest)]) == 0
        out.append(np.load(dest))
    assert out[0]["embeddings"].shape == (20, 512) and np.array_equal(out[0]["embeddings"], out[1]["embeddings"])
    assert np.array_equal(out[0]["labels"], out[1]["labels"])


def test_what_an_exported_backbone_cannot_answer_is_refused_in_one_line(resnet_run, exported, tmp_path, capsys):
    from safetensors.torch import save_file

    path, meta = exported
    for argv, says in ((["eval", "diagnose", str(path)], "holds the backbone alone; diagnose needs"),
                       (["embed", str(path), "--head", "projector", "--split", "test", "-o", str(tmp_path / "e.npz")],
                        "holds the backbone alone, not the projector")):
        assert main(argv + ["data.test_subset=20", "data.bank_subset=20"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "e.npz").exists()
    # a file exported before the config travelled with the weights
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={k: json.dumps(v) for k, v in meta.items() if k != "config"})
    assert main(["eval", "knn", str(old), "data.test_subset=20", "data.bank_subset=20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exported before relssl put the run's config in the file" in err[0], err
