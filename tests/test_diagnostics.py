"""False-negative diagnostics (relssl.metrics.falseneg) on constructed cases with known values,
and `relssl eval diagnose` end to end on a tiny MoCo v2 run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from relssl.cli import main
from relssl.engine import pretrain
from relssl.metrics.falseneg import (
    ascl_candidate_labels,
    component_stats,
    false_negative_stats,
    mixture_similarity_profile,
    neighbour_purity,
    queue_stats,
    self_match_rate,
    soft_target_stats,
)
from relssl.nn import FeatureQueue

from utils import tiny_config


def close(t, v, tol=1e-5):
    return abs(float(t) - v) < tol


# ----------------------------------------------------------------------------- false negatives


def test_queue_of_one_class_fn_rate_one_for_that_class_zero_for_others():
    g = torch.Generator().manual_seed(0)
    queue = torch.randn(50, 8, generator=g)
    qlab = torch.full((50,), 3)
    anchors = torch.randn(6, 8, generator=g)
    for cls, want in ((3, 1.0), (5, 0.0)):
        out = false_negative_stats(anchors, queue, torch.full((6,), cls), qlab, temperature=0.2)
        assert close(out["fn_rate"], want) and int(out["anchors"]) == 6
        # no positive among the candidates: all the softmax mass is on negatives, so FN mass = rate
        assert close(out["fn_mass"], want) and close(out["neg_mass"], 1.0)
    assert all(isinstance(v, torch.Tensor) for v in out.values())


def test_fn_mass_with_a_positive_matches_hand_computation():
    # anchor e0; candidates: positive e0 (cos 1), FN e1 (cos 0), TN -e0 (cos -1)
    a = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pos = torch.tensor([[True, False, False]])
    t = 0.5
    out = false_negative_stats(a, c, torch.tensor([0]), torch.tensor([0, 0, 1]), t, positive_mask=pos)
    z = math.exp(1 / t) + 1 + math.exp(-1 / t)
    assert close(out["fn_rate"], 0.5)
    assert close(out["fn_mass"], 1 / z) and close(out["neg_mass"], (1 + math.exp(-1 / t)) / z)
    assert close(out["fn_sim"], 0.0) and close(out["tn_sim"], -1.0)


def test_in_batch_self_excluded_and_unknown_labels_ignored():
    x = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.tensor([0, 0, 1, -1])
    valid = ~torch.eye(4, dtype=torch.bool)
    out = false_negative_stats(x, x, labels, labels, 0.1, candidate_valid=valid)
    # anchor 0: labelled negatives {1, 2} -> 1/2; anchor 1: {0, 2} -> 1/2; anchor 2: {0, 1} -> 0; anchor 3 unlabelled
    assert int(out["anchors"]) == 3 and close(out["fn_rate"], 1 / 3)
    # an anchor with only unlabelled candidates is left out; none left -> NaN, count 0
    out = false_negative_stats(x[:1], x[1:], torch.tensor([0]), torch.full((3,), -1), 0.1)
    assert int(out["anchors"]) == 0 and math.isnan(float(out["fn_rate"])) and math.isnan(float(out["fn_mass"]))


def test_fn_stats_validate_input():
    with pytest.raises(ValueError):
        false_negative_stats(torch.randn(2, 3), torch.randn(4, 5), torch.zeros(2), torch.zeros(4), 0.1)
    with pytest.raises(ValueError):
        false_negative_stats(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(2), torch.zeros(4), 0.0)


# ----------------------------------------------------------------------------- soft targets


def test_soft_target_one_hot_and_uniform():
    k = 8
    anchor = torch.tensor([2, 4])
    cand = torch.tensor([2, 1, 1, 4, 0, 0, 0, 0])
    onehot = torch.zeros(2, k)
    onehot[0, 0] = 1.0  # same class (2)
    onehot[1, 3] = 1.0  # same class (4)
    out = soft_target_stats(onehot, anchor, cand)
    assert close(out["same_mass"], 1.0) and close(out["entropy"], 0.0) and int(out["rows"]) == 2
    uni = torch.full((2, k), 1 / k)
    out = soft_target_stats(uni, anchor, cand)
    assert close(out["entropy"], math.log(k)) and close(out["same_mass"], 1 / k)
    assert close(out["same_share"], 1 / k)  # the chance level a uniform target sits at


def test_soft_target_ascl_labels_and_unknown_rows():
    labels = ascl_candidate_labels(torch.tensor([1, -1]), torch.tensor([1, 0, -1]))
    assert labels.tolist() == [[1, 1, 0, -1], [-1, 1, 0, -1]]
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0]])
    out = soft_target_stats(p, torch.tensor([1, -1]), labels)
    assert int(out["rows"]) == 1 and close(out["same_mass"], 0.75)
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert close(out["entropy"], h0 / 2)  # entropy averages every row (row 1 is one-hot)


# ----------------------------------------------------------------------------- neighbours, components


def test_neighbour_purity_and_self_match():
    assert close(neighbour_purity(torch.tensor([0, 1, 2, -1]), torch.tensor([0, 2, -1, 1])), 0.5)
    topk = torch.tensor([[0, 0, 1], [1, -1, -1]])
    assert close(neighbour_purity(torch.tensor([0, 1]), topk), 3 / 4)
    assert math.isnan(float(neighbour_purity(torch.tensor([-1]), torch.tensor([0]))))
    assert close(self_match_rate(torch.tensor([10, 11, 12, 13]), torch.tensor([10, 5, 12, -1])), 2 / 3)
    assert close(self_match_rate(torch.tensor([7, 8]), torch.tensor([[7, 7], [1, 2]])), 0.5)


def test_component_stats_known_components():
    # components {0,1,2} (labels 0,0,1), {3,4} (1,1), {5} (2)
    comp = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    out = component_stats(comp, labels)
    # same-component pairs: (0,1) same, (0,2), (1,2) differ, (3,4) same -> 2 / 4
    assert close(out["purity"], 0.5)
    assert close(out["components"], 3.0) and close(out["mean_size"], 2.0)
    assert torch.allclose(out["size_hist"], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]))
    big = component_stats(torch.zeros(7, dtype=torch.long), torch.tensor([0, 0, 0, 0, 0, 0, -1]))
    assert close(big["purity"], 1.0) and torch.allclose(big["size_hist"], torch.tensor([0, 0, 0, 0, 1.0]))
    single = component_stats(torch.arange(3), torch.tensor([0, 1, 2]))
    assert math.isnan(float(single["purity"])) and close(single["mean_size"], 1.0)


def test_connected_components_feed_component_stats():
    from relssl.losses import connected_components

    comp = connected_components(torch.tensor([1, 0, 3, 2]))  # two 2-cycles
    out = component_stats(comp, torch.tensor([5, 5, 6, 7]))
    assert close(out["purity"], 0.5) and close(out["mean_size"], 2.0)


# ----------------------------------------------------------------------------- BSIM mixtures


def test_mixture_profile_follows_lambda():
    # keys orthonormal; a mixture embedding lam * k_i + (1 - lam) * k_perm(i): cosines are
    # lam / norm and (1 - lam) / norm with norm = sqrt(lam^2 + (1 - lam)^2)
    b = 10
    keys = torch.eye(b, 16)
    perm = torch.arange(b).flip(0)
    lam = torch.linspace(0.05, 0.95, b)
    q = lam.view(-1, 1) * keys + (1 - lam).view(-1, 1) * keys[perm]
    out = mixture_similarity_profile(q, keys, perm, lam, bins=5)
    norm = (lam ** 2 + (1 - lam) ** 2).sqrt()
    src, par = lam / norm, (1 - lam) / norm
    assert out["count"].tolist() == [2.0] * 5
    assert torch.allclose(out["sim_source"], src.view(5, 2).mean(1), atol=1e-5)
    assert torch.allclose(out["sim_partner"], par.view(5, 2).mean(1), atol=1e-5)
    assert (out["sim_source"].diff() > 0).all() and float(out["corr"]) > 0.9
    assert torch.allclose(out["bin_edges"], torch.linspace(0, 1, 6))
    # constant lambda (scalar): one filled bin, correlation undefined
    const = mixture_similarity_profile(q, keys, perm, 0.5, bins=4)
    assert const["count"].tolist() == [0.0, 0.0, b, 0.0] and math.isnan(float(const["corr"]))
    assert math.isnan(float(const["sim_source"][0]))


# ----------------------------------------------------------------------------- queues


def test_queue_stats_age_fill_labels_duplicates():
    q = FeatureQueue(10, 4)
    empty = queue_stats(q, current_step=0, num_classes=3)
    assert close(empty["fill"], 0.0) and math.isnan(float(empty["age_mean"])) and math.isnan(float(empty["label_entropy"]))
    q.enqueue(torch.randn(4, 4), index=torch.arange(4), labels=torch.tensor([0, 0, 1, 1]), step=3)
    q.enqueue(torch.randn(4, 4), index=torch.tensor([0, 1, 8, 9]), labels=torch.tensor([0, 0, 1, 1]), step=7)
    s = queue_stats(q, current_step=10, num_classes=3)
    assert close(s["fill"], 0.8)
    assert close(s["age_mean"], (4 * 7 + 4 * 3) / 8) and close(s["age_max"], 7)
    assert close(s["duplicate_rate"], 2 / 8)  # indices 0 and 1 are stored twice
    assert torch.allclose(s["class_hist"], torch.tensor([0.5, 0.5, 0.0]))
    assert close(s["label_entropy"], math.log(2)) and close(s["labelled"], 1.0)
    # wrap-around: the oldest rows (step 3) are overwritten
    q.enqueue(torch.randn(4, 4), index=torch.tensor([20, 21, 22, 23]), step=9)
    s = queue_stats(q, current_step=10)
    assert close(s["fill"], 1.0) and close(s["age_max"], 7)
    assert close(s["age_mean"], (2 * 7 + 4 * 3 + 4 * 1) / 10)
    assert close(s["labelled"], 0.6)  # the last write carried no labels


def test_queue_one_class_gives_fn_rate_one():
    q = FeatureQueue(32, 8)
    q.enqueue(torch.randn(20, 8), labels=torch.full((20,), 4), index=torch.arange(20), step=1)
    anchors = torch.randn(5, 8)
    out = false_negative_stats(anchors, q.features, torch.full((5,), 4), q.labels, 0.2,
                               candidate_valid=q.valid_mask())
    assert close(out["fn_rate"], 1.0) and close(out["fn_mass"], 1.0)
    out = false_negative_stats(anchors, q.features, torch.full((5,), 1), q.labels, 0.2,
                               candidate_valid=q.valid_mask())
    assert close(out["fn_rate"], 0.0) and close(out["fn_mass"], 0.0)
    # self-match from the stored index: querying with the stored rows finds themselves
    _, idx = q.topk(q.features[:20], 1, valid_only=True)
    assert close(self_match_rate(torch.arange(20), q.index[idx[:, 0]]), 1.0)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory, fmnist_small):
    cfg = tiny_config("mocov2", tmp_path_factory.mktemp("diag"), "optim.epochs=2", "name=tiny",
                      "trainer.knn_every=0")
    return pretrain(cfg, splits=fmnist_small, quiet=True)["run_dir"]


def test_cli_diagnose_moco(moco_run, fmnist_small, monkeypatch, capsys):
    monkeypatch.setattr("relssl.evaluate.checkpoint.load_data", lambda *a, **k: fmnist_small)
    assert main(["eval", "diagnose", moco_run, "--batch", "64", "--n", "300", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "FN rate" in text and "queue queue" in text
    res = json.load(open(f"{moco_run}/eval/diagnose.json"))
    assert res["protocol"] == "diagnose" and res["embedding"] == "online" and res["temperature"] == 0.2
    ib = res["in_batch"]
    assert ib["images"] == 300 and ib["anchors"] == 300
    # 10 balanced classes: about 1 in 9 other images of a batch shares the anchor's class
    assert 0.03 < ib["fn_rate"] < 0.25
    for key in ("fn_mass", "neg_mass"):
        assert 0.0 <= ib[key] <= 1.0
    assert ib["fn_mass"] <= ib["neg_mass"]
    q = res["queues"]["queue"]
    steps = res["global_step"]
    assert steps == 2 * (600 // 64) and q["size"] == 256 and q["fill"] == 1.0
    assert 0 <= q["age_mean"] <= q["age_max"] <= 256 // 64
    assert abs(sum(q["class_hist"]) - 1) < 1e-5 and len(q["class_hist"]) == 10 and q["labelled"] == 1.0
    for key in ("nn1_purity", "nn5_purity", "nn1_self_match", "nn5_self_match"):
        assert 0.0 <= q[key] <= 1.0
    assert 0.0 <= q["queue_negatives"]["fn_rate"] <= 1.0 and q["probe_images"] == 64
