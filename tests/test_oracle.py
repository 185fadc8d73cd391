"""The label-oracle control (issue #13): ``plugins: [mask_false_negatives]`` and ``relssl.losses.oracle``."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from relssl.engine import pretrain
from relssl.errors import ConfigError, TrainingError
from relssl.losses import (
    LossArgumentError,
    masked_infonce,
    moco_loss,
    nnclr_loss,
    ntxent_loss,
    oracle_moco_loss,
    oracle_nnclr_loss,
    oracle_ntxent_loss,
    oracle_pnnclr_loss,
    pnnclr_loss,
)
from relssl.methods import StepInfo, build_method, method_config
from relssl.methods.plugins import build_plugins, plugins_config
from relssl.nn import build_backbone
from utils import read_metrics, tiny_config

E1, E2 = [1.0, 0.0], [0.0, 1.0]


# ----------------------------------------------------------------------------- the loss core


def test_masked_infonce_hand_values():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    pos = torch.tensor([[True, False, False]])
    fn = torch.tensor([[False, True, False]])
    # remove: the false negative leaves the denominator
    expect = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    assert masked_infonce(logits, pos, fn, "remove").item() == pytest.approx(expect, rel=1e-6)
    # positive: mean of the log-probabilities of the positive and the false negative
    z = math.exp(2) + math.exp(1) + 1
    expect = -0.5 * ((2 - math.log(z)) + (1 - math.log(z)))
    assert masked_infonce(logits, pos, fn, "positive").item() == pytest.approx(expect, rel=1e-6)
    # no false negative: plain cross-entropy
    none = torch.zeros_like(fn)
    ce = F.cross_entropy(logits, torch.tensor([0]))
    for mode in ("remove", "positive"):
        assert masked_infonce(logits, pos, none, mode).item() == pytest.approx(ce.item(), rel=1e-6)


def test_masked_infonce_ignores_non_candidates_and_positives():
    logits = torch.tensor([[float("-inf"), 1.0, 0.5, 0.0]])
    pos = torch.tensor([[False, True, False, False]])
    fn = torch.tensor([[True, True, False, False]])  # -inf entry and the positive itself: no effect
    ce = F.cross_entropy(logits, torch.tensor([1]))
    for mode in ("remove", "positive"):
        assert masked_infonce(logits, pos, fn, mode).item() == pytest.approx(ce.item(), rel=1e-6)


def test_bad_arguments_are_one_line_errors():
    z = torch.randn(4, 3)
    with pytest.raises(LossArgumentError, match="mode must be one of"):
        oracle_ntxent_loss(z, z, torch.arange(4), 0.5, mode="drop")
    with pytest.raises(LossArgumentError, match="labels must be a 1-d tensor of 4 class labels"):
        oracle_ntxent_loss(z, z, torch.arange(3))
    with pytest.raises(LossArgumentError, match="integer class labels"):
        oracle_ntxent_loss(z, z, torch.zeros(4))
    with pytest.raises(LossArgumentError, match="queue_labels must be a 1-d tensor of 5"):
        oracle_moco_loss(z, z, torch.randn(5, 3), torch.arange(4), torch.arange(4))


# ----------------------------------------------------------------------------- each loss


def test_ntxent_distinct_labels_equal_plain_loss_and_one_class_removes_everything():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    plain = ntxent_loss(z1, z2, 0.3)
    for mode in ("remove", "positive"):
        assert torch.allclose(oracle_ntxent_loss(z1, z2, torch.arange(6), 0.3, mode), plain, atol=1e-6)
        # unknown labels (-1) are never false negatives
        assert torch.allclose(oracle_ntxent_loss(z1, z2, torch.full((6,), -1), 0.3, mode), plain, atol=1e-6)
    # one class: every candidate but the positive is removed, so each row's loss is 0
    assert oracle_ntxent_loss(z1, z2, torch.zeros(6, dtype=torch.long), 0.3, "remove").item() == pytest.approx(0, abs=1e-6)


def test_ntxent_positive_mode_hand_value():
    # z1 = z2 = [e1, e2], one class, tau 1: anchor e1 sees e2 (0), e1 (1, positive), e2 (0)
    z = torch.tensor([E1, E2])
    value = oracle_ntxent_loss(z, z.clone(), torch.tensor([0, 0]), 1.0, "positive")
    assert value.item() == pytest.approx(math.log(math.e + 2) - 1 / 3, rel=1e-6)


def test_moco_oracle_values_and_gradient():
    torch.manual_seed(1)
    q, k, queue = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3), torch.randn(7, 3)
    y = torch.tensor([0, 1, 2, 3])
    plain = moco_loss(q, k, queue, 0.2)
    # unwritten rows (-1) and other classes: the plain loss
    ql = torch.tensor([-1, 4, 5, 6, -1, 7, 8])
    assert torch.allclose(oracle_moco_loss(q, k, queue, y, ql, 0.2, "remove"), plain, atol=1e-6)
    # a queue of the queries' own classes only: remove leaves only the positive
    same = oracle_moco_loss(q, k, queue[:4], y, y, 0.2, "remove")
    # each query keeps its positive and the 3 queue rows of other classes
    rows = []
    for i in range(4):
        qi = F.normalize(q[i], dim=0)
        others = F.normalize(queue[[j for j in range(4) if j != i]], dim=1)
        logits = torch.cat([(qi @ F.normalize(k[i], dim=0)).view(1), others @ qi]) / 0.2
        rows.append(-F.log_softmax(logits, dim=0)[0])
    assert torch.allclose(same, torch.stack(rows).mean(), atol=1e-6)
    # moving a removed (same-class) queue row does not change the loss
    ql2 = torch.tensor([0, 9, 9, 9, 9, 9, 9])
    a = oracle_moco_loss(q, k, queue, y, ql2, 0.2, "remove")
    moved = queue.clone()
    moved[0] = torch.randn(3)
    b = oracle_moco_loss(q, k, moved, y, ql2, 0.2, "remove")
    # only query 0 (class 0) has row 0 removed; the other queries see it as a negative
    a0 = oracle_moco_loss(q[:1], k[:1], queue, y[:1], ql2, 0.2, "remove")
    b0 = oracle_moco_loss(q[:1], k[:1], moved, y[:1], ql2, 0.2, "remove")
    assert a0.item() == pytest.approx(b0.item(), rel=1e-6)
    assert not torch.allclose(a, b)
    a.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_nnclr_and_pnnclr_distinct_labels_equal_plain_losses():
    torch.manual_seed(2)
    nn1, nn2, p1, p2 = (torch.randn(5, 4) for _ in range(4))
    for sym in (False, True):
        plain = nnclr_loss(nn1, nn2, p1, p2, torch.cat([nn1, nn2]), 0.2, sym)
        assert torch.allclose(oracle_nnclr_loss(nn1, nn2, p1, p2, torch.arange(5), 0.2, sym), plain, atol=1e-6)
    a, b, support = torch.randn(5, 4), torch.randn(5, 4), torch.randn(9, 4)
    plain = pnnclr_loss(a, b, support, 0.1, 0.9)
    assert torch.allclose(oracle_pnnclr_loss(a, b, support, torch.arange(5), 0.1, 0.9), plain, atol=1e-6)
    # same class everywhere, remove: each of the 4B rows keeps only its target
    one = oracle_pnnclr_loss(a, b, support, torch.zeros(5, dtype=torch.long), 0.1, 0.9, mode="remove")
    assert one.item() == pytest.approx(0.0, abs=1e-6)
    two = oracle_nnclr_loss(nn1, nn2, p1, p2, torch.zeros(5, dtype=torch.long), 0.2, False, "remove")
    assert two.item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- the plug-in


def _host(name):
    backbone, dim = build_backbone("convnet_tiny", in_channels=1)
    section = {"name": name}
    for key, val in dict(proj_hidden=32, proj_dim=16, pred_hidden=32, enc_hidden=32, enc_dim=16,
                         queue_size=64).items():
        section[key] = val
    from relssl.methods import METHODS

    fields = {f for f in METHODS[name].Config.__dataclass_fields__}
    section = {k: v for k, v in section.items() if k == "name" or k in fields}
    return build_method(method_config(section), backbone, dim)


def test_plugin_config():
    assert plugins_config(["mask_false_negatives"], "mocov2")["mask_false_negatives"]["mode"] == "remove"
    with pytest.raises(ConfigError, match="plugin mask_false_negatives does not fit method byol"):
        plugins_config(["mask_false_negatives"], "byol")
    with pytest.raises(ConfigError, match="plugins.mask_false_negatives.mode must be one of remove, positive"):
        plugins_config({"mask_false_negatives": {"mode": "drop"}}, "simclr")
    with pytest.raises(ConfigError, match="ascl and mask_false_negatives do not combine"):
        plugins_config(["ascl", "mask_false_negatives"], "mocov2")


@pytest.mark.parametrize("name", ["simclr", "mocov2", "nnclr", "pnnclr", "wcl"])
def test_every_host_step_changes_with_the_oracle(name):
    torch.manual_seed(3)
    views = [torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    losses = {}
    for mode in (None, "remove", "positive"):
        torch.manual_seed(4)
        m = _host(name)
        if mode:
            build_plugins(plugins_config({"mask_false_negatives": {"mode": mode}}, name), m)
        info = StepInfo(step=0, progress=0.0, index=torch.arange(8), labels=labels,
                        generator=torch.Generator().manual_seed(0))
        if name in ("mocov2", "nnclr", "pnnclr"):  # fill the queue with labelled rows first
            m.training_step(views, info)
        out = m.training_step(views, info)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        grads = [p.grad for p in m.backbone.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        losses[mode] = out["loss"].item()
    assert losses["remove"] < losses[None]  # fewer negatives: lower loss
    assert losses["positive"] != pytest.approx(losses[None])
    # without labels the oracle refuses to run
    m = _host(name)
    build_plugins(plugins_config(["mask_false_negatives"], name), m)
    with pytest.raises(TrainingError, match="mask_false_negatives needs class labels"):
        m.training_step(views, StepInfo(step=0, progress=0.0, generator=torch.Generator().manual_seed(0)))


def test_oracle_run_end_to_end_is_marked_as_using_labels(tmp_path, fmnist_small):
    cfg = tiny_config("mocov2", tmp_path, "optim.epochs=1", "plugins=[mask_false_negatives]",
                      "trainer.diagnose_every=2", "trainer.knn_at_start=false")
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    assert res["uses_labels"] is True
    assert json.loads(open(f"{res['run_dir']}/results.json").read())["uses_labels"] is True
    rows = read_metrics(res["run_dir"])
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows if r.get("loss"))
    # the oracle removes the queue's same-class rows from the loss, the diagnostics still see them
    fn = [float(r["diag/queue_fn_rate"]) for r in rows if r.get("diag/queue_fn_rate") not in (None, "", "nan")]
    assert fn and all(0.0 <= v <= 1.0 for v in fn)


def test_oracle_refuses_an_unlabelled_pretraining_split(tmp_path, fmnist_small):
    from relssl.data import DatasetSplits

    pre = fmnist_small.pretrain
    unlabelled = DatasetSplits(info=fmnist_small.info, pretrain=type(pre)(pre.images, None),
                               bank=fmnist_small.bank, test=fmnist_small.test)
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=1", "plugins=[mask_false_negatives]")
    with pytest.raises(ConfigError, match="mask_false_negatives trains on class labels"):
        pretrain(cfg, splits=unlabelled, quiet=True)
