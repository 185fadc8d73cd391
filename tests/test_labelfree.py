"""Label-free monitoring: RankMe, uniformity and alignment by hand, and the monitor end to end on
real Fashion-MNIST images with and without labels (``trainer.monitor``)."""

import json
import math

import numpy as np
import pytest
import torch

from relssl.config import load_config
from relssl.data import DatasetSplits, ImageDataset, load_dataset
from relssl.engine import pretrain
from relssl.engine.callbacks import KNNProbe, LabelFreeProbe, RepresentationMonitor
from relssl.engine.checkpoint import load_checkpoint_file
from relssl.engine.module import PretrainModule
from relssl.engine.setup import build_monitor, resolve_monitor
from relssl.errors import ConfigError, DataError
from relssl.metrics.labelfree import alignment, labelfree_metrics, rankme, uniformity

from dataset_files import save_image, smooth_image
from utils import read_metrics, tiny_config

EPS = 1e-7


def _rankme_by_hand(singular_values):
    total = sum(singular_values)
    p = [s / total + EPS for s in singular_values]
    return math.exp(-sum(q * math.log(q) for q in p))


def _rotate(x, seed=0):
    """U x V^T with random orthogonal U, V: the same singular values, no zero entries."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(x.shape[0], x.shape[0], generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=g, dtype=torch.float64))
    return u @ x.double() @ v.T


# ------------------------------------------------------------------------------------------ RankMe
def test_rankme_of_a_rank_one_matrix_is_one():
    z = torch.outer(torch.arange(1.0, 41.0), torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.0]))  # 40 x 6, rank 1
    # one singular value: p = (1 + eps, eps, ...); RankMe = 1 up to the eps terms
    assert rankme(z) == pytest.approx(1.0, abs=1e-4)
    assert rankme(z) == pytest.approx(_rankme_by_hand([torch.linalg.matrix_norm(z.double()).item()] + [0.0] * 5),
                                      rel=1e-6)


def test_rankme_of_orthogonal_equal_norm_columns_is_d():
    z = torch.zeros(10, 4)
    z[0, 0], z[3, 1], z[5, 2], z[9, 3] = 2.0, -2.0, 2.0, 2.0  # 4 orthogonal columns of norm 2
    assert rankme(z) == pytest.approx(4.0, rel=1e-5)
    q, _ = torch.linalg.qr(torch.randn(200, 16, generator=torch.Generator().manual_seed(0)))
    assert rankme(7.0 * q) == pytest.approx(16.0, rel=1e-5)  # no zero entries, same spectrum
    assert rankme(7.0 * q.T) == pytest.approx(16.0, rel=1e-5)  # D > N: min(N, D) singular values


def test_rankme_two_singular_values_by_hand():
    # singular values 3 and 1: p = (3/4, 1/4) (+ eps), RankMe = exp(-(3/4 ln 3/4 + 1/4 ln 1/4)) = 1.75477
    z = _rotate(torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    assert rankme(z) == pytest.approx(1.7547653, abs=1e-6)
    assert rankme(z) == pytest.approx(_rankme_by_hand([3.0, 1.0]), rel=1e-9)
    # and three: 2, 1, 1 -> p = (1/2, 1/4, 1/4): exp(1.5 ln 2) = 2 sqrt(2)
    z3 = _rotate(torch.diag(torch.tensor([2.0, 1.0, 1.0])), seed=1)
    assert rankme(z3) == pytest.approx(2.0 * math.sqrt(2.0), abs=1e-6)


def test_rankme_is_invariant_to_scaling_and_bounded():
    z = torch.randn(300, 24, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.1, 3.0, 24)
    r = rankme(z)
    assert 1.0 < r < 24.0
    for c in (1e-3, 0.5, 7.0, 1e4):
        assert rankme(c * z) == pytest.approx(r, rel=1e-9)
    assert rankme(torch.zeros(5, 3)) == 0.0
    assert math.isnan(rankme(torch.full((5, 3), float("nan"))))
    with pytest.raises(ValueError, match=r"features must be a \(N, D\) tensor"):
        rankme(torch.ones(5))


# ---------------------------------------------------------------------------- uniformity / alignment
def test_uniformity_by_hand():
    # two orthogonal unit vectors: ||z1 - z2||^2 = 2, uniformity = log exp(-2 * 2) = -4
    assert uniformity(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(-4.0, abs=1e-6)
    # e1, -e1, e2: squared distances 4, 2, 2 -> log((e^-8 + 2 e^-4) / 3); with t = 1: log((e^-4 + 2 e^-2) / 3)
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert uniformity(z) == pytest.approx(math.log((math.exp(-8) + 2 * math.exp(-4)) / 3), abs=1e-6)
    assert uniformity(z, t=1.0) == pytest.approx(math.log((math.exp(-4) + 2 * math.exp(-2)) / 3), abs=1e-6)
    # rows are L2-normalised first; one point repeated: every distance 0, uniformity 0
    assert uniformity(z * torch.tensor([[5.0], [0.1], [2.0]])) == pytest.approx(uniformity(z), abs=1e-6)
    assert uniformity(torch.tensor([[1.0, 1.0]] * 4)) == pytest.approx(0.0, abs=1e-6)


def test_uniformity_in_chunks_equals_all_pairs():
    z = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    zn = torch.nn.functional.normalize(z.double(), dim=1)
    ref = torch.pdist(zn).pow(2).mul(-2.0).exp().mean().log().item()  # Wang & Isola's own formula
    assert uniformity(z, chunk=128) == pytest.approx(ref, abs=1e-5)
    assert uniformity(z) == pytest.approx(ref, abs=1e-5)


def test_alignment_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # row 2 normalises to a's row 2
    assert alignment(a, b) == pytest.approx(1.0)  # (2 + 0) / 2
    assert alignment(a, b, alpha=1.0) == pytest.approx(math.sqrt(2.0) / 2)
    assert alignment(a, 3.0 * a) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        alignment(a, b[:1])


# ------------------------------------------------------------------------------------- the monitor
def _unlabeled(splits):
    """The same real images with every label dropped (what unlabeled_folder gives)."""
    return DatasetSplits(info=splits.info, pretrain=ImageDataset(splits.pretrain.images),
                         bank=ImageDataset(splits.bank.images), test=ImageDataset(splits.test.images))


def test_labelfree_metrics_are_reproducible(fmnist_small):
    from relssl.nn import build_backbone
    from relssl.augment import recipe

    torch.manual_seed(0)
    backbone, _ = build_backbone("convnet_tiny", in_channels=1, cifar_stem=True, maxpool=False, bn_splits=1)
    images = fmnist_small.pretrain.images[:96]
    info = fmnist_small.info
    kw = dict(size=32, mean=info.mean, std=info.std, device="cpu", seed=5, batch_size=48)
    recipes = [recipe("simclr", crop_size=32)] * 2
    a = labelfree_metrics(backbone, images, recipes, **kw)
    b = labelfree_metrics(backbone, images, recipes, **kw)
    assert a == b and set(a) == {"rankme", "uniformity", "alignment"}  # fixed seed: the same views
    assert 1.0 <= a["rankme"] <= 64 and -4.0 < a["uniformity"] < 0.0 and 0.0 < a["alignment"] < 4.0
    c = labelfree_metrics(backbone, images, recipes, **{**kw, "seed": 6})
    assert c["rankme"] == a["rankme"] and c["alignment"] != a["alignment"]  # only the views change
    d = labelfree_metrics(backbone, images, recipes, **{**kw, "align_n": 40})  # alignment on 40 of the images
    assert d["rankme"] == a["rankme"] and d["uniformity"] == a["uniformity"] and 0.0 < d["alignment"] < 4.0


def test_monitor_choice_and_config(fmnist_small, tmp_path):
    unl = _unlabeled(fmnist_small)
    cfg = tiny_config("simclr", tmp_path)
    assert cfg.trainer.monitor == "auto" and cfg.trainer.monitor_subset == 4096
    assert resolve_monitor(cfg, fmnist_small) == "knn" and resolve_monitor(cfg, unl) == "rankme"
    assert resolve_monitor(tiny_config("simclr", tmp_path, "trainer.monitor=rankme"), fmnist_small) == "rankme"
    assert resolve_monitor(tiny_config("simclr", tmp_path, "trainer.monitor=none"), unl) == "none"
    off = tiny_config("simclr", tmp_path, "trainer.monitor=knn", "trainer.knn_every=0", "trainer.knn_at_start=false")
    assert resolve_monitor(off, unl) == "none"  # the cadence never runs it: no labels needed
    for bad, msg in (
            (["trainer.monitor=rank_me"], "trainer.monitor must be one of auto, knn, rankme, none; got 'rank_me'"),
            (["trainer.monitor_subset=1"], "trainer.monitor_subset must be 0 .*, an integer >= 2 or null"),
            (["trainer.monitor_subset=-3"], "trainer.monitor_subset must be 0"),
            (["trainer.monitor=rankme", "trainer.monitor_subset=0"], "monitor_subset=0 turns the label-free probe off")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, bad)
    # a fixed, seeded, class-blind subset of the images the run trains on
    cfg = tiny_config("simclr", tmp_path, "trainer.monitor_subset=100")
    module = PretrainModule(cfg, fmnist_small)
    a = build_monitor(cfg, fmnist_small, module, "knn")
    b = build_monitor(cfg, fmnist_small, module, "rankme")
    assert [p.name for p in a.probes] == ["knn", "labelfree"] and [p.name for p in b.probes] == ["labelfree"]
    assert len(b.probes[0].images) == 100 and torch.equal(a.probes[1].images, b.probes[0].images)
    assert build_monitor(cfg, fmnist_small, module, "none") is None
    # monitor_subset=0: kNN alone (what benchmarks/compare.py --preset cpu uses), refused without labels
    cfg0 = tiny_config("simclr", tmp_path, "trainer.monitor_subset=0")
    assert [p.name for p in build_monitor(cfg0, fmnist_small, module, "knn").probes] == ["knn"]
    with pytest.raises(ConfigError, match="has no labels, so the run is monitored label-free, but trainer.monitor_subset=0"):
        resolve_monitor(cfg0, unl)


def test_monitor_knn_on_unlabeled_folder_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        save_image(tmp_path / "photos" / f"{i}.png", smooth_image(rng, 3, 16))
    cfg = tiny_config("simclr", tmp_path / "runs", "data.dataset=unlabeled_folder", f"data.root={tmp_path / 'photos'}",
                      "data.image_size=16", "data.crop_size=16", "optim.batch_size=4", "trainer.monitor=knn")
    with pytest.raises(DataError) as err:
        pretrain(cfg, quiet=True)
    msg = str(err.value)
    assert "\n" not in msg and "trainer.monitor=knn needs labels for the bank and test splits" in msg
    assert "has no class folders" in msg and "trainer.monitor=auto" in msg and "knn_every=0" not in msg
    assert not (tmp_path / "runs").exists()  # nothing written
    splits = load_dataset("unlabeled_folder", root=str(tmp_path / "photos"), size=16)
    assert resolve_monitor(tiny_config("simclr", tmp_path), splits) == "rankme"


def test_unlabeled_pretraining_with_default_config(tmp_path, fmnist_small):
    """No override: monitor=auto picks RankMe, logs it, keeps best.ckpt by it and records it."""
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=2")
    res = pretrain(cfg, splits=_unlabeled(fmnist_small), quiet=True)
    run = tmp_path / res["run_dir"].split("/")[-1]
    assert res["monitor"] == "rankme" and res["knn_last_top1"] is None and res["knn_history"] == []
    hist = res["rankme_history"]
    assert [h["epoch"] for h in hist] == [1, 2] and set(hist[0]) >= {"rankme", "uniformity", "alignment", "seconds"}
    assert res["rankme_last"] == hist[-1]["rankme"] and res["rankme_best"] == max(h["rankme"] for h in hist)
    assert 1.0 <= res["rankme_init"] <= 64  # convnet_tiny: 64 features
    assert json.loads((run / "results.json").read_text())["rankme_history"] == hist
    rows = read_metrics(run)
    logged = [float(r["rankme"]) for r in rows if r.get("rankme")]
    assert logged == pytest.approx([h["rankme"] for h in hist], rel=1e-5)
    assert [r for r in rows if r.get("uniformity")] and [r for r in rows if r.get("alignment")]
    assert float(next(r["rankme_init"] for r in rows if r.get("rankme_init"))) == pytest.approx(res["rankme_init"])
    # best.ckpt holds the epoch of the highest RankMe; the monitor's history is in the checkpoints
    best = load_checkpoint_file(run / "checkpoints" / "best.ckpt")
    state = best["callbacks"]["KNNMonitor"]
    assert state["history"]["labelfree"][-1]["rankme"] == pytest.approx(res["rankme_best"])
    last = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["callbacks"]["KNNMonitor"]
    assert last["history"]["labelfree"] == hist and last["init"]["labelfree"]["rankme"] == res["rankme_init"]
    # the report draws the RankMe curve and tabulates the label-free monitor
    pytest.importorskip("matplotlib")
    from relssl.evaluate.report import write_report

    text = write_report(run).read_text()
    assert "## Label-free monitor" in text and "highest RankMe (best.ckpt)" in text
    assert (run / "curves.png").is_file()


def test_labelled_run_logs_knn_and_rankme(tmp_path, fmnist_small):
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=1", "trainer.monitor_subset=256")
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    assert res["monitor"] == "knn" and res["knn_last_top1"] is not None and res["rankme_last"] is not None
    assert [h["epoch"] for h in res["knn_history"]] == [1] and set(res["knn_history"][0]) == {
        "epoch", "step", "top1", "top5", "seconds"}  # kNN's records as before
    rows = read_metrics(res["run_dir"])
    assert [r for r in rows if r.get("knn_top1")] and [r for r in rows if r.get("rankme")]
    assert [r for r in rows if r.get("knn_init_top1")] and [r for r in rows if r.get("rankme_init")]


def test_monitor_reads_the_kNN_only_checkpoint_state():
    """Checkpoints of the kNN-only monitor (same state key) resume with their kNN history."""
    images, labels = torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1])
    mon = RepresentationMonitor([KNNProbe(images, labels, images, labels, 2), LabelFreeProbe(images, [])])
    old = {"history": [{"epoch": 1, "step": 9, "top1": 50.0, "top5": 90.0, "seconds": 1.0}],
           "init_result": {"top1": 20.0, "top5": 60.0, "seconds": 1.0}}
    mon.load_state_dict(old)
    assert mon.history == {"knn": old["history"], "labelfree": []} and mon.init == {"knn": old["init_result"]}
    state = {"history": {"knn": [], "labelfree": [{"epoch": 1, "rankme": 3.0}]}, "init": {"labelfree": {"rankme": 2.0}}}
    mon.load_state_dict(state)
    assert mon.state_dict() == state and mon.state_key == "KNNMonitor"
