"""WCL method (spec wcl-bsim-pnnclr-baselines.md section 1): loss wiring, view schedule, graph
metrics, gradients, global-batch gathering over two processes, and an end-to-end run."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from relssl.errors import ConfigError
from relssl.losses import ntxent_loss, wcl_loss
from relssl.methods import METHODS, StepInfo, method_config
from relssl.methods.wcl import WCL, graph_stats
from relssl.nn import build_backbone

# lightning, the engine and the test helpers are imported inside the end-to-end test only, so the
# two spawned processes of the global-batch test start quickly


def make_wcl(seed=0, **options):
    torch.manual_seed(seed)
    backbone, dim = build_backbone("convnet_tiny", in_channels=1)
    cfg = WCL.Config(proj_hidden=32, proj_dim=16, **options)
    cfg.validate()
    return WCL(backbone, dim, cfg)


def views(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 16, 16, generator=g), torch.randn(n, 1, 16, 16, generator=g)]


def heads_by_hand(model, x1, x2):
    h = model.encoder(torch.cat([x1, x2]))
    a1, a2 = model.instance_head(h).chunk(2)
    g1, g2 = model.graph_head(h).chunk(2)
    return a1, a2, g1, g2


# ------------------------------------------------------------------------------ loss wiring


@pytest.mark.parametrize("detach", [True, False])
def test_step_loss_is_wcl_loss_on_the_head_outputs(detach):
    model = make_wcl(detach_candidates=detach, temperature=0.2, graph_weight=0.7)
    x1, x2 = views()
    out = model.training_step([x1, x2], StepInfo(step=0, progress=0.0))
    a1, a2, g1, g2 = heads_by_hand(model, x1, x2)
    want = wcl_loss(a1, a2, g1, g2, temperature=0.2, graph_weight=0.7, detach_candidates=detach)
    torch.testing.assert_close(out["loss"], want, rtol=1e-6, atol=1e-6)
    # the logged parts add up: instance + weight * graph
    torch.testing.assert_close(out["instance_loss"], ntxent_loss(a1, a2, 0.2).detach())
    torch.testing.assert_close(out["instance_loss"] + 0.7 * out["graph_loss"], out["loss"].detach())
    assert out["graph_loss"] > 0


def test_graph_weight_zero_is_ntxent_on_the_instance_head():
    model = make_wcl(graph_weight=0.0)
    x1, x2 = views()
    out = model.training_step([x1, x2], StepInfo(step=0, progress=0.0))
    a1, a2, _, _ = heads_by_hand(model, x1, x2)
    torch.testing.assert_close(out["loss"], ntxent_loss(a1, a2, temperature=0.1), rtol=1e-6, atol=1e-6)
    assert "graph_loss" not in out


def test_views_for_epoch_switches_at_weak_aug_epochs():
    assert WCL.Config().weak_aug_epochs == 10  # the code's value
    model = make_wcl(weak_aug_epochs=3)
    schedule = [model.views_for_epoch(e) for e in range(5)]
    assert schedule == [["strong", "strong"]] * 3 + [["simclr", "simclr"]] * 2
    never = make_wcl(weak_aug_epochs=0)
    assert never.views_for_epoch(0) == ["simclr", "simclr"] == list(WCL.default_views)


def test_config_defaults_and_errors():
    assert METHODS["wcl"] is WCL
    section = method_config({"name": "wcl"})
    assert (section["proj_hidden"], section["proj_dim"], section["temperature"], section["graph_weight"],
            section["detach_candidates"], section["multicrop"]) == (4096, 256, 0.1, 1.0, True, 0)
    with pytest.raises(ConfigError, match="method.multicrop=6 is not implemented.*UNVERIFIED"):
        method_config({"name": "wcl", "multicrop": 6})
    with pytest.raises(ConfigError, match="method.weak_aug_epochs must be >= 0"):
        method_config({"name": "wcl", "weak_aug_epochs": -1})
    with pytest.raises(ConfigError, match="method.graph_weight must be >= 0"):
        method_config({"name": "wcl", "graph_weight": -0.5})
    with pytest.raises(ConfigError, match="method.temperature must be > 0"):
        method_config({"name": "wcl", "temperature": 0})


# ------------------------------------------------------------------------------ graph metrics


def on_circle(angles):
    a = torch.tensor(angles, dtype=torch.float32)
    return torch.stack([a.cos(), a.sin()], dim=1) * 3.0  # not unit length: normalised inside


def test_graph_stats_on_hand_made_clusters():
    triples = on_circle([0.0, 0.01, 0.03, 2.0, 2.01, 2.03])  # two tight clusters of 3 -> size 3
    pairs = on_circle([0.0, 0.01, 1.5, 1.51, 3.0, 3.01])  # three tight pairs -> size 2
    truth = torch.tensor([0, 0, 0, 1, 1, 1])
    assert graph_stats([triples], truth) == {"graph_size": 3.0, "graph_purity": 1.0}
    # labels disagreeing inside the components: each triple has 1 agreeing unordered pair of 3
    mixed = torch.tensor([0, 0, 1, 1, 1, 0])
    torch.testing.assert_close(graph_stats([triples], mixed)["graph_purity"], torch.tensor(1 / 3))
    # pairs {0,1} {2,3} {4,5} against truth: pairs 0-1 and 4-5 agree, 2-3 does not
    torch.testing.assert_close(graph_stats([pairs], truth)["graph_purity"], torch.tensor(2 / 3))
    # two views: means of the per-view values
    both = graph_stats([triples, pairs], truth)
    torch.testing.assert_close(both["graph_size"], torch.tensor(2.5))
    torch.testing.assert_close(both["graph_purity"], torch.tensor((1 + 2 / 3) / 2))
    # no labels: no purity
    assert set(graph_stats([pairs])) == {"graph_size"}


def test_step_metrics_with_and_without_labels():
    model = make_wcl()
    x1, x2 = views(n=10)
    labels = torch.arange(10) % 3
    out = model.training_step([x1, x2], StepInfo(step=0, progress=0.0, labels=labels))
    assert set(out) == {"loss", "instance_loss", "graph_loss", "graph_size", "graph_purity"}
    assert 2.0 <= out["graph_size"] <= 10.0 and 0.0 <= out["graph_purity"] <= 1.0
    assert all(v.dim() == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
    out = model.training_step([x1, x2], StepInfo(step=0, progress=0.0))
    assert "graph_purity" not in out and "graph_size" in out
    quiet = make_wcl(graph_metrics=False).training_step(
        [x1, x2], StepInfo(step=0, progress=0.0, labels=labels))
    assert set(quiet) == {"loss"}


# ------------------------------------------------------------------------------ gradients


def grads(model, detach):
    model.cfg.detach_candidates = detach
    model.zero_grad()
    model.training_step(views(), StepInfo(step=0, progress=0.0))["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_reaches_both_heads_and_backbone_and_detach_changes_graph_head_only():
    model = make_wcl()
    official, textbook = grads(model, True), grads(model, False)
    for part in ("encoder.", "instance_head.", "graph_head."):
        assert any(g.abs().sum() > 0 for n, g in official.items() if n.startswith(part)), part
    # the instance term does not depend on the flag; the graph term's gradient does
    for n, g in official.items():
        if n.startswith("instance_head."):
            torch.testing.assert_close(g, textbook[n])
    diff = max((official[n] - textbook[n]).abs().max().item()
               for n in official if n.startswith("graph_head."))
    assert diff > 1e-6
    # with graph_weight 0 the graph head gets no gradient
    model = make_wcl(graph_weight=0.0)
    g0 = grads(model, True)
    assert all(g.abs().sum() == 0 for n, g in g0.items() if n.startswith("graph_head."))


# ------------------------------------------------------------------------------ global batch


def _worker(rank, world, tmp, x1, x2):
    """Each process holds half of the batch; saves its loss and DDP-averaged gradients."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank,
                                         world_size=world)
    try:
        torch.set_num_threads(1)
        n = x1.shape[0] // world
        part = slice(rank * n, (rank + 1) * n)
        results = {}
        for detach in (True, False):
            model = mlp_wcl(detach)
            loss = model.training_step([x1[part], x2[part]], StepInfo(step=0, progress=0.0))["loss"]
            loss.backward()
            grads = {}
            for name, p in model.named_parameters():
                g = p.grad.clone()
                torch.distributed.all_reduce(g)
                grads[name] = g / world  # what DDP does
            results[detach] = (loss.detach(), grads)
        torch.save(results, f"{tmp}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def mlp_wcl(detach):
    """No batch statistics anywhere (heads in eval mode), so only the gathering can differ."""
    torch.manual_seed(0)
    model = WCL(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 12)), 12,
                WCL.Config(proj_hidden=16, proj_dim=6, detach_candidates=detach))
    return model.eval()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    mp.spawn(_worker, args=(2, str(tmp_path), x1, x2), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for detach in (True, False):
        model = mlp_wcl(detach)
        loss = model.training_step([x1, x2], StepInfo(step=0, progress=0.0))["loss"]
        loss.backward()
        for rank in (0, 1):
            got_loss, got_grads = results[rank][detach]
            torch.testing.assert_close(got_loss, loss.detach())  # the graph is over all 16 images
            for name, p in model.named_parameters():
                torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------ end to end


def test_pretrain_learns_and_switches_views(tmp_path, fmnist_small):
    import lightning as L

    from relssl.engine import pretrain
    from utils import read_metrics, tiny_config

    class ViewLog(L.Callback):
        """Records the view names and crop scales the engine used in each epoch."""

        def __init__(self):
            self.seen = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.seen[trainer.current_epoch] = (list(pl_module.view_names),
                                                    [r.crop_scale for r in pl_module.recipes])

    log = ViewLog()
    cfg = tiny_config("wcl", tmp_path, "optim.epochs=4", "optim.lr=0.05", "method.weak_aug_epochs=1",
                      "trainer.knn_every=4", "trainer.knn_at_start=false")  # kNN once, at the end
    res = pretrain(cfg, splits=fmnist_small, quiet=True, extra_callbacks=[log])
    strong = (["strong", "strong"], [(0.2, 1.0)] * 2)
    simclr = (["simclr", "simclr"], [(0.08, 1.0)] * 2)
    assert log.seen == {0: strong, 1: simclr, 2: simclr, 3: simclr}
    rows = read_metrics(res["run_dir"])
    per_epoch = 600 // 64
    losses = torch.tensor([float(r["loss"]) for r in rows if r.get("loss")])
    assert len(losses) == 4 * per_epoch and torch.isfinite(losses).all()
    by_epoch = losses.view(4, per_epoch).mean(dim=1)
    # the loss falls under the same (SimCLR) views: last epoch below the first SimCLR epoch
    assert by_epoch[3] < by_epoch[1] - 0.05, by_epoch.tolist()
    assert res["knn_last_top1"] > 30.0  # chance is 10%
    sizes = [float(r["train/graph_size"]) for r in rows if r.get("train/graph_size")]
    purity = [float(r["train/graph_purity"]) for r in rows if r.get("train/graph_purity")]
    assert len(sizes) == len(purity) == 4 * per_epoch
    assert all(2.0 <= s <= 64.0 for s in sizes) and all(0.0 <= p <= 1.0 for p in purity)
    # components beat chance at grouping classes (10 balanced classes: ~0.1 by chance)
    assert sum(purity[-per_epoch:]) / per_epoch > 0.2
