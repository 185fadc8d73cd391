"""relssl embed: a checkpoint's features of every image of a split, written as .npz / .safetensors / .csv."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from relssl.augment import eval_batch
from relssl.cli import main
from relssl.data import DatasetSplits
from relssl.data.core import subset_indices
from relssl.data.filebacked import decode_image
from relssl.engine import pretrain
from relssl.errors import ConfigError
from relssl.evaluate import Embeddings, embed_checkpoint, embed_split, extract_features, prepare, write_embeddings
from relssl.evaluate.embed import HEADS, SPLITS, SUFFIXES

from dataset_files import save_image, write_class_folder
from utils import tiny_config


@pytest.fixture(scope="module")
def small(fmnist_small):
    """Three distinct small splits (so ``all`` has three parts)."""
    s = fmnist_small
    return DatasetSplits(info=s.info, pretrain=s.pretrain.subset(96, seed=0), bank=s.bank.subset(64, seed=0),
                         test=s.test.subset(40, seed=0))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small):
    """A convnet_tiny SimCLR run on Fashion-MNIST after two steps (projection head 32-d)."""
    tmp = tmp_path_factory.mktemp("embed_run")
    cfg = tiny_config("simclr", tmp, "optim.max_steps=2", "optim.epochs=1", "trainer.knn_every=0",
                      "trainer.knn_at_start=false", "name=emb")
    return pretrain(cfg, splits=small, quiet=True)["run_dir"]


@pytest.fixture(scope="module")
def setup(run_dir, small):
    return prepare(run_dir, splits=small, device="cpu")


def _reference(setup, images, normalize=False):
    """What the kNN evaluation computes for these images."""
    return extract_features(setup.backbone, images, size=setup.eval_size, mean=setup.mean, std=setup.std,
                            device="cpu", normalize=normalize)


def _one_line_error(capsys, args, message):
    try:
        rc = main(args)
    except SystemExit as stop:  # argparse's errors (one line too, see commands._OneLineParser)
        rc = stop.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relssl: error: ") and message in err and "\n" not in err, err


def test_api_all_splits_match_extract_features(run_dir, small, setup):
    emb = embed_checkpoint(run_dir, splits=small, device="cpu", batch_size=50)  # batches across split ends
    assert isinstance(emb, Embeddings) and len(emb) == 96 + 64 + 40 and emb.dim == 64
    assert emb.embeddings.dtype == torch.float32 and emb.index.dtype == torch.int64
    assert emb.split == ["pretrain"] * 96 + ["bank"] * 64 + ["test"] * 40
    rows = 0
    for role in ("pretrain", "bank", "test"):
        ds = getattr(small, role)
        sl = slice(rows, rows + len(ds))
        assert torch.equal(emb.index[sl], torch.arange(len(ds)))
        assert torch.equal(emb.labels[sl], ds.labels)
        ref = _reference(setup, ds.images)
        assert torch.allclose(emb.embeddings[sl], ref, atol=1e-5, rtol=1e-5), (emb.embeddings[sl] - ref).abs().max()
        rows += len(ds)
    assert emb.paths is None  # Fashion-MNIST is not read from image files
    m = emb.meta
    assert m["count"] == 200 and m["dim"] == 64 and m["eval_size"] == 32 and m["mean"] == [0.286]
    assert m["splits"] == {"pretrain": 96, "bank": 64, "test": 40} and m["method"] == "simclr" and m["notes"] == []

    # the same set of images in two roles is embedded once
    shared = DatasetSplits(info=small.info, pretrain=small.pretrain, bank=small.pretrain, test=small.test)
    s2 = prepare(run_dir, splits=shared, device="cpu")
    assert embed_split(s2, "all").meta["splits"] == {"pretrain": 96, "test": 40}


def test_normalize_subset_and_projector(setup, small):
    test = small.test
    emb = embed_split(setup, "test", normalize=True, subsets={"test": 12})
    idx = subset_indices(len(test), test.labels, 12, setup.cfg.seed)
    assert torch.equal(emb.index, idx) and torch.equal(emb.labels, test.labels[idx])
    assert torch.allclose(emb.embeddings.norm(dim=1), torch.ones(12), atol=1e-5)
    assert torch.allclose(emb.embeddings, _reference(setup, test.images[idx], normalize=True), atol=1e-5)
    proj = embed_split(setup, "bank", head="projector")
    with torch.no_grad():
        x = eval_batch(small.bank.images, setup.eval_size, setup.mean, setup.std)
        ref = setup.method.online.eval()(x)
    assert proj.dim == 32 and proj.meta["head"] == "projector"
    assert torch.allclose(proj.embeddings, ref, atol=1e-5, rtol=1e-5)
    assert SPLITS == ("pretrain", "bank", "test", "all") and HEADS == ("backbone", "projector")
    for kwargs, message in [({"split": "train"}, "unknown split 'train'; allowed: pretrain, bank, test, all"),
                            ({"head": "predictor"}, "unknown head 'predictor'"),
                            ({"batch_size": 0}, "batch size must be >= 1")]:
        with pytest.raises(ConfigError, match=message):
            embed_split(setup, **{"split": "test", **kwargs})


def test_formats_round_trip(setup, tmp_path):
    emb = embed_split(setup, "all")
    emb.paths = [f"/data/img {i},{i}.png" for i in range(len(emb))]  # a comma and a space: csv quoting
    x, idx, lab = emb.embeddings.numpy(), emb.index.numpy(), emb.labels.numpy()

    z = np.load(write_embeddings(tmp_path / "e.npz", emb))  # no pickles: plain arrays
    assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (200, 64)
    assert np.array_equal(z["embeddings"], x) and z["index"].dtype == np.int64 and np.array_equal(z["index"], idx)
    assert z["labels"].dtype == np.int64 and np.array_equal(z["labels"], lab)
    assert z["paths"].tolist() == emb.paths and z["split"].tolist() == emb.split
    assert json.loads(str(z["meta"]))["columns"] == ["index", "split", "path", "label"]

    out = write_embeddings(tmp_path / "sub" / "e.safetensors", emb)  # a missing directory is created
    t = load_file(str(out))
    assert torch.equal(t["embeddings"], emb.embeddings) and torch.equal(t["index"], emb.index)
    assert torch.equal(t["labels"], emb.labels)
    with safe_open(str(out), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta["format"] == "relssl-embeddings" and meta["paths"] == emb.paths
    assert [meta["split_names"][i] for i in t["split"].tolist()] == emb.split

    with open(write_embeddings(tmp_path / "e.csv", emb), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["index", "split", "path", "label"] and rows[0][4:] == [f"e{j}" for j in range(64)]
    assert len(rows) == 201 and rows[1][2] == "/data/img 0,0.png"
    assert [int(r[0]) for r in rows[1:]] == idx.tolist() and [int(r[3]) for r in rows[1:]] == lab.tolist()
    assert np.array_equal(np.array([r[4:] for r in rows[1:]], dtype=np.float64).astype(np.float32), x)  # exact
    assert sorted(os.listdir(tmp_path)) == ["e.csv", "e.npz", "sub"]  # no temporary files left


def test_write_is_atomic(setup, tmp_path, monkeypatch):
    emb = embed_split(setup, "test")
    out = write_embeddings(tmp_path / "e.npz", emb)
    before = out.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(ConfigError, match="cannot write .*e.npz: No space left on device"):
        write_embeddings(out, emb)
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["e.npz"]


def test_cli_real_dataset_subset(run_dir, fmnist, tmp_path, capsys):
    out = tmp_path / "test.npz"
    # overrides after options too; the run's own subsets are not used, the one given here is
    assert main(["embed", run_dir, "--split", "test", "-o", str(out), "--normalize", "--device", "cpu",
                 "data.test_subset=30"]) == 0
    printed = capsys.readouterr().out
    assert "embedded 30 images (30 test) of fashion_mnist" in printed and str(out) in printed
    z = np.load(out)
    idx = subset_indices(len(fmnist.test), fmnist.test.labels, 30, 0)
    assert np.array_equal(z["index"], idx.numpy()) and np.array_equal(z["labels"], fmnist.test.labels[idx].numpy())
    s = prepare(run_dir, splits=fmnist, device="cpu")
    ref = _reference(s, fmnist.test.images[idx], normalize=True)
    assert torch.allclose(torch.from_numpy(z["embeddings"]), ref, atol=1e-5)
    assert np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, atol=1e-5)
    assert "paths" not in z.files and json.loads(str(z["meta"]))["normalize"] is True


def test_cli_unlabeled_folder_has_paths(run_dir, setup, tmp_path, capsys):
    root = tmp_path / "my images"
    g = np.random.default_rng(0)
    files = [root / "b.png", root / "a" / "x.png", root / "a" / "deep" / "y.jpg", root / "c.png"]
    for i, p in enumerate(files):  # grayscale and RGB mixed: decoded to the backbone's one channel
        save_image(p, g.integers(0, 256, (3 if i == 1 else 1, 24 + 4 * i, 28), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "emb.csv"
    assert main(["embed", run_dir, "data.dataset=unlabeled_folder", f"data.root={root}", "-o", str(out),
                 "--device", "cpu", "--json"]) == 0
    res = capsys.readouterr()
    meta = json.loads(res.out)
    assert meta["file"] == str(out) and meta["count"] == 4 and meta["eval_size"] == 64 and meta["channels"] == 1
    assert "relssl: note: the images were embedded at 64 px but the run was evaluated at 32 px" in res.err
    assert "data.options.mean=[0.286] data.options.std=[0.353]" in res.err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    expect = sorted(str(p) for p in files)
    assert [r["path"] for r in rows] == expect and "label" not in rows[0]
    assert [r["split"] for r in rows] == ["pretrain"] * 4 and [int(r["index"]) for r in rows] == [0, 1, 2, 3]

    # the same images at the run's size and normalisation, as the notes say: features of exactly those pixels
    npz = tmp_path / "emb.npz"
    assert main(["embed", run_dir, "data.dataset=unlabeled_folder", f"data.root={root}", "data.image_size=32",
                 "data.options.mean=[0.286]", "data.options.std=[0.353]", "-o", str(npz), "--device", "cpu"]) == 0
    assert "note" not in capsys.readouterr().err
    z = np.load(npz)
    assert z["paths"].tolist() == expect and "labels" not in z.files
    images = torch.from_numpy(np.stack([decode_image(p, 1, 32) for p in expect]))
    ref = extract_features(setup.backbone, images, size=32, mean=(0.286,), std=(0.353,), device="cpu", normalize=False)
    assert torch.allclose(torch.from_numpy(z["embeddings"]), ref, atol=1e-5)
    # a folder too large for memory stays file-backed: read in chunks, the same rows
    emb = embed_checkpoint(run_dir, ["data.dataset=unlabeled_folder", f"data.root={root}", "data.image_size=32",
                                     "data.options.mean=[0.286]", "data.options.std=[0.353]", "data.memory_limit_gb=0"],
                           device="cpu")
    assert emb.paths == expect and torch.allclose(emb.embeddings, ref, atol=1e-5)


def test_cli_labelled_folder_paths_and_labels(run_dir, setup, tmp_path, capsys):
    root = tmp_path / "classes"
    written = write_class_folder(root, classes=("cat", "dog"), per_class=5, size=32, channels=1)
    out = tmp_path / "folder.safetensors"
    assert main(["embed", run_dir, "data.dataset=folder", f"data.root={root}", "data.image_size=32",
                 "-o", str(out), "--device", "cpu"]) == 0
    assert "with labels and paths" in capsys.readouterr().out
    t = load_file(str(out))
    with safe_open(str(out), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    paths, names = meta["paths"], [meta["split_names"][i] for i in t["split"].tolist()]
    assert meta["splits"] == {"pretrain": 8, "test": 2} and names == ["pretrain"] * 8 + ["test"] * 2
    assert sorted(paths) == sorted(str(p) for c in written.values() for p, _ in c)  # every image once
    assert meta["classes"] == ["cat", "dog"]
    assert [meta["classes"][y] for y in t["labels"].tolist()] == [os.path.basename(os.path.dirname(p)) for p in paths]
    pixels = {str(p): x for c in written.values() for p, x in c}  # PNG: the exact pixels, at 32 px already
    images = torch.from_numpy(np.stack([pixels[p] for p in paths]))
    ref = extract_features(setup.backbone, images, size=32, mean=meta["mean"], std=meta["std"], device="cpu",
                           normalize=False)  # the mean / std measured on the folder, as relssl eval uses
    assert torch.allclose(t["embeddings"], ref, atol=1e-5)


def test_bad_input_is_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    out = str(tmp_path / "e.npz")
    for args, message in [
        (["embed", str(tmp_path / "nope"), "-o", out], "does not exist"),
        (["embed", run_dir, "--split", "train", "-o", out], "invalid choice: 'train'"),
        (["embed", run_dir, "-o", str(tmp_path / "e.parquet")], "unknown format '.parquet'; allowed suffixes: "
                                                                 ".npz, .safetensors, .csv"),
        (["embed", run_dir, "-o", str(tmp_path / "a_file" / "e.npz")], "is not a directory; choose a writable -o"),
        (["embed", run_dir, "-o", str(tmp_path)], "is a directory"),
        (["embed", run_dir, "data.dataset=unlabeled_folder", f"data.root={tmp_path / 'empty'}", "-o", out],
         "no image files under"),
        (["embed", run_dir, "optim.lr=1", "-o", out], "only data.* keys (and backbone.channels_last) can be changed"),
        (["embed", run_dir, "--batch-size", "0", "-o", out], "--batch-size must be >= 1"),
        (["embed", run_dir], "the following arguments are required: -o/--output"),
    ]:
        _one_line_error(capsys, args, message)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "empty"]  # nothing written, not even partly
    assert SUFFIXES == (".npz", ".safetensors", ".csv")
