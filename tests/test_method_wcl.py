"""WCL method (docs/methods/wcl.md): loss wiring, view schedule, graph
metrics, gradients, global-batch gathering over two processes, and an end-to-end run."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from relssl.errors import ConfigError
from relssl.losses import ntxent_loss, wcl_loss
from relssl.methods import METHODS, StepInfo, method_config
from relssl.losses.graph import multicrop_term
from relssl.methods.wcl import WCL
from relssl.metrics.falseneg import graph_stats
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
    assert (section["multicrop_size"], section["multicrop_scale"], section["multicrop_rule"],
            section["multicrop_weight"]) == (None, None, "self", 1.0)
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


def _worker(rank, world, tmp, x1, x2, small):
    """Each process holds half of the batch; saves its loss and DDP-averaged gradients (the two-view
    step with and without detached candidates, and the multi-crop step with 2 small crops)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank,
                                         world_size=world)
    try:
        torch.set_num_threads(1)
        n = x1.shape[0] // world
        part = slice(rank * n, (rank + 1) * n)
        results = {}
        for detach in (True, False, "multicrop"):
            model = mlp_wcl(detach)
            extra = [s[part] for s in small] if detach == "multicrop" else []
            loss = model.training_step([x1[part], x2[part], *extra], StepInfo(step=0, progress=0.0))["loss"]
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
    """No batch statistics anywhere (heads in eval mode), so only the gathering can differ.
    ``detach="multicrop"``: 2 small crops (same shape here: the MLP needs 8 inputs), rule
    "component", so that the acceptance rule and the crops' rows must match across processes."""
    torch.manual_seed(0)
    options = dict(detach_candidates=True, multicrop=2, multicrop_rule="component") \
        if detach == "multicrop" else dict(detach_candidates=detach)
    model = WCL(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 12)), 12,
                WCL.Config(proj_hidden=16, proj_dim=6, **options))
    return model.eval()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    # small crops: noisy copies, so that some pass the acceptance rule
    small = [x1 + 0.3 * torch.randn(16, 8, generator=g) for _ in range(2)]
    mp.spawn(_worker, args=(2, str(tmp_path), x1, x2, small), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for detach in (True, False, "multicrop"):
        model = mlp_wcl(detach)
        extra = small if detach == "multicrop" else []
        out = model.training_step([x1, x2, *extra], StepInfo(step=0, progress=0.0))
        loss = out["loss"]
        if detach == "multicrop":
            assert 0 < out["multicrop_accept"] < 1  # the rule picks crops, and not all
        loss.backward()
        for rank in (0, 1):
            got_loss, got_grads = results[rank][detach]
            torch.testing.assert_close(got_loss, loss.detach())  # the graph is over all 16 images
            for name, p in model.named_parameters():
                torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------ end to end


def view_log(attr):
    """A callback recording, per epoch, the view names and one field of each recipe the engine used."""
    import lightning as L

    class ViewLog(L.Callback):
        def __init__(self):
            self.seen = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.seen[trainer.current_epoch] = (list(pl_module.view_names),
                                                    [getattr(r, attr) for r in pl_module.recipes])

    return ViewLog()


def test_pretrain_learns_and_switches_views(tmp_path, fmnist_small):
    from relssl.engine import pretrain
    from utils import read_metrics, tiny_config

    log = view_log("crop_scale")
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


# ------------------------------------------------------------------------------ multi-crop (UNVERIFIED)


def test_multicrop_zero_is_the_two_view_step_unchanged():
    """Pinned from the two-view implementation before multi-crop existed (same seed, same input)."""
    model = make_wcl(seed=5, temperature=0.2)
    assert model.cfg.multicrop == 0 and model.views_for_epoch(20) == ["simclr", "simclr"]
    x1, x2 = views(n=12, seed=4)
    out = model.training_step([x1, x2], StepInfo(step=0, progress=0.0))
    assert set(out) == {"loss", "instance_loss", "graph_loss", "graph_size"}
    torch.testing.assert_close(out["loss"].detach(), torch.tensor(6.998239517211914), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["graph_loss"], torch.tensor(3.54329848), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="wcl takes 2 \\+ method.multicrop = 2 views, got 3"):
        model.training_step([x1, x2, x2], StepInfo(step=0, progress=0.0))


def small_views(n=12, k=2, size=8, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, size, size, generator=g) for _ in range(k)]


def test_multicrop_step_with_views_of_two_sizes():
    model = make_wcl(multicrop=2, multicrop_weight=0.5, multicrop_rule="component")
    assert model.views_for_epoch(0) == ["strong"] * 4 and model.views_for_epoch(10) == ["simclr"] * 4
    x1, x2 = views(n=12)
    s1, s2 = small_views(n=12, k=2, size=8)
    labels = torch.arange(12) % 3
    out = model.training_step([x1, x2, s1, s2], StepInfo(step=0, progress=0.0, labels=labels))
    assert {"multicrop_accept", "multicrop_loss", "instance_loss", "graph_loss", "graph_purity"} <= set(out)
    assert torch.isfinite(out["loss"]) and 0.0 <= out["multicrop_accept"] <= 1.0
    # by hand: main views as in the two-view step, small crops in a pass of their own
    a1, a2, g1, g2 = heads_by_hand(model, x1, x2)
    gs1, gs2 = model.graph_head(model.encoder(torch.cat([s1, s2]))).chunk(2)
    base = wcl_loss(a1, a2, g1, g2, temperature=0.1)
    term, accepted = multicrop_term(torch.stack([gs1, gs2], dim=1), g1, g2, 0.1, rule="component")
    torch.testing.assert_close(out["loss"], base + 0.5 * term, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["multicrop_accept"], accepted.float().mean())
    torch.testing.assert_close(out["graph_loss"], (base - out["instance_loss"]).detach(), rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    for part in ("encoder.", "instance_head.", "graph_head."):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in model.named_parameters() if n.startswith(part)), part


def test_multicrop_term_gradient_reaches_the_encoder_through_the_small_crops():
    def small_grads(weight):
        model = make_wcl(multicrop=2, multicrop_weight=weight, multicrop_rule="component")
        small = [s.requires_grad_() for s in small_views(n=12, k=2)]
        out = model.training_step([*views(n=12), *small], StepInfo(step=0, progress=0.0))
        out["loss"].backward()
        return out["multicrop_accept"], [s.grad.abs().sum().item() for s in small]

    accept, grads = small_grads(1.0)
    assert accept > 0 and all(g > 0 for g in grads)  # through the encoder's small-crop forward
    _, grads = small_grads(0.0)
    assert grads == [0.0, 0.0]  # the term is the only use of the small crops
    # weight 0: the two-view loss itself (the small crops never touch the main embeddings)
    model = make_wcl(multicrop=2, multicrop_weight=0.0)
    x1, x2 = views(n=12)
    out = model.training_step([x1, x2, *small_views(n=12, k=2)], StepInfo(step=0, progress=0.0))
    torch.testing.assert_close(out["loss"], wcl_loss(*heads_by_hand(model, x1, x2)), rtol=1e-6, atol=1e-6)


def on_circle_pairs(angles, shift):
    return on_circle(angles), on_circle([a + shift for a in angles])


def test_multicrop_acceptance_rule_on_constructed_embeddings():
    # samples 0, 1 near angle 0 and 2, 3 near angle 2, in both views: components {0, 1}, {2, 3}
    g1, g2 = on_circle_pairs([0.0, 0.1, 2.0, 2.1], shift=0.003)
    # one small crop per sample: 0 next to its own views; 1 next to sample 2 (other component);
    # 2 next to sample 3 (same component); 3 on its own view 1
    small = on_circle([0.01, 2.05, 2.095, 2.1])[:, None, :]
    _, acc_self = multicrop_term(small, g1, g2, rule="self")
    _, acc_comp = multicrop_term(small, g1, g2, rule="component")
    assert acc_self.squeeze(1).tolist() == [True, False, False, True]
    assert acc_comp.squeeze(1).tolist() == [True, False, True, True]
    # the term: mean over the accepted crops of SupCon over the 8 main-view rows, positives = the
    # crop's component members in each view (its own two views included)
    m = torch.nn.functional.normalize(torch.cat([g1, g2]), dim=1)
    c = torch.nn.functional.normalize(small[:, 0], dim=1)
    comp = [0, 0, 1, 1]

    def l(i):
        logp = torch.log_softmax(c[i] @ m.T / 0.1, dim=0)
        pos = [col for col in range(8) if comp[col % 4] == comp[i]]
        return -logp[pos].mean()

    term, _ = multicrop_term(small, g1, g2, rule="component", temperature=0.1)
    torch.testing.assert_close(term, (l(0) + l(2) + l(3)) / 3)
    term, _ = multicrop_term(small, g1, g2, rule="self", temperature=0.1)
    torch.testing.assert_close(term, (l(0) + l(3)) / 2)
    # nothing accepted: the term is 0 but stays in the graph; the candidates are detached by default
    rejected = small[[1, 1, 0, 0]].clone().requires_grad_()
    g1r, g2r = g1.clone().requires_grad_(), g2.clone().requires_grad_()
    term, acc = multicrop_term(rejected, g1r, g2r)
    assert not acc.any() and term.item() == 0.0
    term.backward()
    assert rejected.grad is not None and g1r.grad is None
    with pytest.raises(ValueError, match="rule must be one of"):
        multicrop_term(small, g1, g2, rule="knn")


def test_multicrop_config_errors_are_one_line():
    from relssl.config import load_config
    from relssl.engine.views import view_recipes

    def error(*overrides):
        with pytest.raises(ConfigError) as err:
            view_recipes(load_config(None, ["method.name=wcl", *overrides]), 32)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "method.multicrop must be >= 0" in error("method.multicrop=-1")
    assert "method.multicrop_size (40 px) must be <= the crop size (32 px)" in error(
        "method.multicrop=2", "method.multicrop_size=40", "data.crop_size=32")  # at config time
    assert "must be <= the crop size (32 px)" in error("method.multicrop=2", "method.multicrop_size=33")  # views
    assert "method.multicrop_size must be >= 1" in error("method.multicrop=2", "method.multicrop_size=0")
    assert "method.multicrop_scale must be [low, high]" in error("method.multicrop_scale=[0.5, 0.1]")
    assert "method.multicrop_rule must be one of self, component" in error("method.multicrop_rule=knn")
    assert "method.multicrop_weight must be >= 0" in error("method.multicrop_weight=-1")
    assert "views must name 2 recipes for wcl" in error("method.multicrop=2", "views=[simclr, simclr, simclr]")


def test_view_recipes_add_the_small_crops():
    from relssl.augment import make_views
    from relssl.config import load_config
    from relssl.engine.views import view_recipes

    cfg = load_config(None, ["method.name=wcl", "method.multicrop=2"])
    names, recipes = view_recipes(cfg, 32)
    assert names == ["simclr"] * 4
    assert [r.crop_size for r in recipes] == [32, 32, 16, 16]
    assert [r.crop_scale for r in recipes] == [(0.08, 1.0)] * 2 + [(0.14, 0.5)] * 2
    assert recipes[2].brightness == recipes[0].brightness == 0.8  # the main views' colour ops
    # the weak epochs: the small crops follow the main views' preset
    names, recipes = view_recipes(cfg, 32, make_wcl(multicrop=2).views_for_epoch(0))
    assert names == ["strong"] * 4 and [r.crop_size for r in recipes] == [32, 32, 16, 16]
    assert recipes[3].crop_scale == (0.14, 0.5) and recipes[3].brightness == 0.4
    # ImageNet-size crops: SwAV's small-crop range; explicit size and scale; presets named by the user
    cfg = load_config(None, ["method.name=wcl", "method.multicrop=6", "method.multicrop_size=96"])
    _, recipes = view_recipes(cfg, 224)
    assert [(r.crop_size, r.crop_scale) for r in recipes[2:]] == [(96, (0.05, 0.14))] * 6
    cfg = load_config(None, ["method.name=wcl", "method.multicrop=1", "method.multicrop_scale=[0.2, 0.3]",
                             "views=[strong, strong, weak]", "augment.weak.crop_size=99"])
    names, recipes = view_recipes(cfg, 32)
    assert names == ["strong", "strong", "weak"] and recipes[2].jitter_p == 0.0
    assert (recipes[2].crop_size, recipes[2].crop_scale) == (16, (0.2, 0.3))  # the method's values win
    # multicrop 0: exactly the two main views
    names, recipes = view_recipes(load_config(None, ["method.name=wcl"]), 32)
    assert names == ["simclr", "simclr"] and [r.crop_size for r in recipes] == [32, 32]
    # make_views copes with views of two sizes (grouped by size, returned in recipe order)
    cfg = load_config(None, ["method.name=wcl", "method.multicrop=2"])
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    out = make_views(images, view_recipes(cfg, 32)[1], [0.5], [0.25], torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in out] == [(5, 1, 32, 32)] * 2 + [(5, 1, 16, 16)] * 2


def test_pretrain_with_multicrop(tmp_path, fmnist_small):
    from relssl.engine import pretrain
    from utils import read_metrics, tiny_config

    log = view_log("crop_size")
    cfg = tiny_config("wcl", tmp_path, "optim.epochs=2", "optim.lr=0.05", "method.weak_aug_epochs=1",
                      "method.multicrop=2", "trainer.knn_every=2", "trainer.knn_at_start=false")
    res = pretrain(cfg, splits=fmnist_small, quiet=True, extra_callbacks=[log])
    assert log.seen == {0: (["strong"] * 4, [32, 32, 16, 16]), 1: (["simclr"] * 4, [32, 32, 16, 16])}
    rows = read_metrics(res["run_dir"])
    per_epoch = 600 // 64
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    accept = [float(r["train/multicrop_accept"]) for r in rows if r.get("train/multicrop_accept")]
    assert len(losses) == len(accept) == 2 * per_epoch
    assert all(torch.isfinite(torch.tensor(losses))) and all(0.0 <= a <= 1.0 for a in accept)
    assert res["knn_last_top1"] > 20.0  # chance is 10%
