"""False-negative diagnostics logged during training (issue #13): constructed cases with known
values, then real runs that log them every N steps, plot them and put them in the report."""

import math

import pytest
import torch

from relssl.engine import pretrain
from relssl.evaluate.report import write_report
from relssl.methods import StepInfo
from relssl.methods.diagnose import (
    batch_diagnostics,
    graph_diagnostics,
    mixture_diagnostics,
    queue_diagnostics,
    queue_health,
    target_diagnostics,
)
from relssl.nn import FeatureQueue
from utils import read_metrics, tiny_config


def info(labels=None, index=None, step=0):
    return StepInfo(step=step, progress=0.0, labels=labels, index=index, diagnose=True)


def test_queue_of_one_class_gives_rate_one_for_that_class():
    torch.manual_seed(0)
    q, k, queue = torch.randn(4, 8), torch.randn(4, 8), torch.randn(16, 8)
    queue_labels = torch.full((16,), 3)
    out = queue_diagnostics(q, k, queue, queue_labels, info(torch.tensor([3, 3, 3, 3])), 0.2)
    assert out["queue_fn_rate"].item() == pytest.approx(1.0)
    assert 0 < out["queue_fn_mass"].item() < 1
    assert math.isnan(out["queue_tn_sim"].item())  # no true negative at all
    out = queue_diagnostics(q, k, queue, queue_labels, info(torch.tensor([4, 4, 4, 4])), 0.2)
    assert out["queue_fn_rate"].item() == 0.0 and out["queue_fn_mass"].item() == 0.0
    # rows never written (label -1) are left out of the rate
    half = torch.cat([torch.full((8,), 3), torch.full((8,), -1)])
    out = queue_diagnostics(q, k, queue, half, info(torch.tensor([3, 3, 4, 4])), 0.2)
    assert out["queue_fn_rate"].item() == pytest.approx(0.5)


def test_batch_rates_and_mass_by_hand():
    z = torch.ones(4, 3)  # every cosine is 1: the softmax is uniform over the candidates
    y = torch.tensor([0, 0, 0, 1])
    out = batch_diagnostics(z, z, info(y), 0.5, same_view=True)
    # anchor of class 0: 6 negatives (3 keys, 3 other anchors), 4 of its class; class 1: none
    assert out["batch_fn_rate"].item() == pytest.approx((3 * 4 / 6) / 4)
    # 7 candidates (positive + 6 negatives), uniform: mass 4/7 on false negatives, 0 for class 1
    assert out["batch_fn_mass"].item() == pytest.approx((3 * 4 / 7) / 4)
    out = batch_diagnostics(z, z, info(y), 0.5, same_view=False)
    assert out["batch_fn_rate"].item() == pytest.approx((3 * 2 / 3) / 4)
    assert out["batch_fn_mass"].item() == pytest.approx((3 * 2 / 4) / 4)
    assert batch_diagnostics(z, z, info(None), 0.5) == {}  # no labels, no diagnostics


def test_soft_targets_graph_and_mixture():
    p = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    out = target_diagnostics(p, info(torch.tensor([1, 2])), torch.tensor([1, 2, 2]))
    assert out["target_same_mass"].item() == pytest.approx((0.7 + 1.0) / 2)
    assert out["target_same_share"].item() == pytest.approx((1 / 3 + 2 / 3) / 2)
    ent = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3)) / 2 - (math.log(0.5)) / 1 / 2 * 1
    assert out["target_entropy"].item() == pytest.approx(ent, rel=1e-5)

    g = graph_diagnostics(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 1, 2, 3]))
    assert g["graph_comp_purity"].item() == 1.0
    assert g["graph_comp_mean_size"].item() == pytest.approx(4 / 3)
    assert g["graph_comp_size_1"].item() == pytest.approx(2 / 3)
    assert g["graph_comp_size_2"].item() == pytest.approx(1 / 3)
    assert g["graph_comp_size_5plus"].item() == 0.0

    keys = torch.eye(4)
    perm = torch.tensor([1, 0, 3, 2])
    m = mixture_diagnostics(keys.clone(), keys, perm, torch.ones(4))  # lambda 1: the mixture is its source
    assert m["bsim_sim_source_b4"].item() == pytest.approx(1.0)
    assert m["bsim_sim_partner_b4"].item() == pytest.approx(0.0)
    assert math.isnan(m["bsim_sim_source_b0"].item())  # empty bin


def test_queue_health_age_and_stale_self_copies():
    q = FeatureQueue(8, 4)
    q.enqueue(torch.randn(3, 4), index=torch.tensor([5, 6, 7]), labels=torch.tensor([0, 1, 2]), step=0)
    q.enqueue(torch.randn(2, 4), index=torch.tensor([8, 9]), labels=torch.tensor([0, 1]), step=3)
    out = queue_health("queue", q, info(index=torch.tensor([5, 8, 1, 2]), step=3))
    # 5 has a copy from step 0; 8 was written this step (not stale); 1 and 2 are absent
    assert out["queue_stale_self"].item() == pytest.approx(0.25)
    assert out["queue_fill"].item() == pytest.approx(5 / 8)
    assert out["queue_age_mean"].item() == pytest.approx((3 * 3 + 0 * 2) / 5)
    assert out["queue_age_max"].item() == 3
    assert out["queue_duplicate_rate"].item() == 0.0


@pytest.mark.parametrize("method, extra", [
    ("mocov2", ["plugins=[bsim]"]),  # queue negatives, the queue, the mixtures
    ("msvq", []),  # soft targets, two queues
    ("wcl", []),  # in-batch negatives and the weak-label graph
])
def test_runs_log_diagnostics_every_n_steps_and_report_them(method, extra, tmp_path, fmnist_small):
    cfg = tiny_config(method, tmp_path, "optim.epochs=1", "optim.warmup_epochs=0", "trainer.diagnose_every=3",
                      "trainer.knn_at_start=false",
                      *extra)
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    rows = read_metrics(res["run_dir"])
    steps = sorted({int(r["step"]) for r in rows if any(k.startswith("diag/") and r[k] for k in r)})
    assert steps == list(range(0, res["steps"], 3))  # every 3rd step, none dropped
    logged = {k[5:] for r in rows for k in r if k.startswith("diag/") and r[k]}
    expect = {"mocov2": {"queue_fn_rate", "queue_fn_mass", "queue_age_mean", "queue_stale_self", "bsim_lam_corr"},
              "msvq": {"target_same_mass", "target_entropy", "queue1_age_mean", "queue2_stale_self"},
              "wcl": {"batch_fn_rate", "batch_fn_mass", "graph_comp_purity", "graph_comp_size_1"}}[method]
    assert expect <= logged, logged
    for r in rows:
        for key in ("diag/queue_fn_rate", "diag/batch_fn_rate", "diag/target_same_mass", "diag/graph_comp_purity"):
            if r.get(key) not in (None, "", "nan"):
                assert 0.0 <= float(r[key]) <= 1.0
    report = write_report(res["run_dir"]).read_text()
    assert "## False-negative diagnostics during training" in report
    assert "![diagnostics](diagnostics.png)" in report
    assert (tmp_path / res["run_dir"].split("/")[-1] / "diagnostics.png").stat().st_size > 1000


def test_no_diagnostics_when_off(tmp_path, fmnist_small):
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=1", "trainer.diagnose_every=0", "trainer.knn_at_start=false")
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    assert not any(k.startswith("diag/") for r in read_metrics(res["run_dir"]) for k in r)
