"""ASCL and BSIM plug-ins on their hosts."""

import pytest
import torch

from relssl.augment.mix import cutmix_masks, mix_batch, partner_permutation, sample_lambda
from relssl.config import load_config
from relssl.config import resolve_recipe
from relssl.engine import pretrain
from relssl.errors import ConfigError
from relssl.losses import ascl_byol_loss, ascl_loss, byol_loss, moco_loss
from relssl.methods import StepInfo, build_method
from relssl.methods.plugins import build_plugins, plugins_config
from relssl.nn import build_backbone
from utils import SMALL_HEADS, read_metrics, tiny_config


def host(name, **opts):
    backbone, dim = build_backbone("convnet_tiny", in_channels=1)
    section = {"name": name, "proj_hidden": 32, "proj_dim": 16, **opts}
    if name == "byol":
        section["pred_hidden"] = 32
    if name == "mocov2":
        section["queue_size"] = 64
    from relssl.methods import method_config

    return build_method(method_config(section), backbone, dim)


def test_plugin_config_errors():
    with pytest.raises(ConfigError, match="unknown plugin 'asc'"):
        plugins_config(["asc"], "mocov2")
    with pytest.raises(ConfigError, match="plugin ascl does not fit method simclr; its hosts: byol, mocov2"):
        plugins_config(["ascl"], "simclr")
    with pytest.raises(ConfigError, match="plugins.ascl.relation must be one of"):
        plugins_config({"ascl": {"relation": "soft"}}, "mocov2")
    with pytest.raises(ConfigError, match="unknown config key 'plugins.bsim.wieght'"):
        plugins_config({"bsim": {"wieght": 1}}, "simclr")
    assert plugins_config(["ascl"], "mocov2")["ascl"]["t2"] == 0.05
    cfg = load_config(resolve_recipe("fashion_mnist/mocov2"), ["plugins=[bsim]"])
    assert cfg.plugins == {"bsim": plugins_config(["bsim"], "mocov2")["bsim"]}


def test_ascl_replaces_the_moco_target():
    m = host("mocov2")
    torch.manual_seed(0)
    q, k, queue = torch.randn(8, 16), torch.randn(8, 16), torch.randn(64, 16)
    assert torch.equal(m.contrast(q, k, queue), moco_loss(q, k, queue, 0.2))
    build_plugins(plugins_config({"ascl": {"nn_num": 2}}, "mocov2"), m)
    assert torch.equal(m.contrast(q, k, queue), ascl_loss(q, k, queue, t1=0.1, t2=0.05, nn_num=2))
    # relation "moco" is exactly MoCo at temperature t1
    m2 = host("mocov2")
    build_plugins(plugins_config({"ascl": {"relation": "moco", "t1": 0.1}}, "mocov2"), m2)
    assert torch.equal(m2.contrast(q, k, queue), moco_loss(q, k, queue, 0.1))


def test_ascl_byol_form_differs_and_keeps_scale():
    m = host("byol")
    torch.manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(8, 16) for _ in range(4))
    plain = m.regress(p1, z2) + m.regress(p2, z1)
    assert torch.equal(plain, byol_loss(p1, p2, z1, z2))  # the symmetric host sums both directions
    build_plugins(plugins_config(["ascl"], "byol"), m)
    soft = m.regress(p1, z2)
    assert torch.equal(soft, ascl_byol_loss(p1, z2, t2=0.05, nn_num=1))
    assert soft != m.regress(p1, p1) and 0 <= soft.item() <= 4


def _byol_step(m, x1, x2):
    """A BYOL training step that records which views reach the online network and the target."""
    seen = {"online": [], "teacher": []}
    hooks = [getattr(m, part).register_forward_pre_hook(lambda mod, args, part=part: seen[part].append(args[0]))
             for part in ("online", "teacher")]
    out = m.training_step([x1, x2], StepInfo(step=0, progress=0.0))
    for h in hooks:
        h.remove()
    return out, seen


def test_ascl_byol_official_form_is_one_direction():
    torch.manual_seed(2)
    x1, x2 = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    m = host("byol", symmetric=False)
    build_plugins(plugins_config(["ascl"], "byol"), m)
    m.eval()  # BatchNorm from running statistics: the recomputation below sees the same function
    out, seen = _byol_step(m, x1, x2)
    # the online network sees the strong view (view 1) only, the target the weak view (view 2) only
    assert [t.data_ptr() for t in seen["online"]] == [x1.data_ptr()]
    assert [t.data_ptr() for t in seen["teacher"]] == [x2.data_ptr()]
    with torch.no_grad():
        expected = ascl_byol_loss(m.predictor(m.online(x1)), m.teacher(x2), t2=0.05, nn_num=1)
    torch.testing.assert_close(out["loss"], expected)
    # symmetric: true sums both directions, each encoder seeing both views
    s = host("byol", symmetric=True)
    build_plugins(plugins_config(["ascl"], "byol"), s)
    s.load_state_dict(m.state_dict())
    s.eval()
    out2, seen2 = _byol_step(s, x1, x2)
    assert [t.shape[0] for t in seen2["online"]] == [16] and [t.shape[0] for t in seen2["teacher"]] == [16]
    with torch.no_grad():
        p1, p2 = s.predictor(s.online(x1)), s.predictor(s.online(x2))
        z1, z2 = s.teacher(x1), s.teacher(x2)
        both = ascl_byol_loss(p1, z2, t2=0.05, nn_num=1) + ascl_byol_loss(p2, z1, t2=0.05, nn_num=1)
    torch.testing.assert_close(out2["loss"], both)


ASCL_DATASETS = ["cifar10", "cifar100", "stl10", "tiny_imagenet", "fashion_mnist"]


@pytest.mark.parametrize("dataset", ASCL_DATASETS)
def test_ascl_recipes_follow_the_official_code(dataset):
    byol = load_config(resolve_recipe(f"{dataset}/byol_ascl"))
    assert byol.method["symmetric"] is False and byol.views == ["strong", "weak"]
    backbone, dim = build_backbone("convnet_tiny", in_channels=1)
    m = build_method(byol.method, backbone, dim)
    # the official ASCL projector: Linear -> ReLU -> Linear, no BatchNorm; the predictor keeps its BN
    assert [type(layer) for layer in m.online.projector] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert torch.nn.BatchNorm1d in {type(layer) for layer in m.predictor}
    with_bn = build_method({**byol.method, "proj_bn": True}, *build_backbone("convnet_tiny", in_channels=1))
    assert [type(layer) for layer in with_bn.online.projector] == [
        torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Linear]
    # official ASCL queue: K = 4096 on every dataset (K enters the confidence through log K)
    moco = load_config(resolve_recipe(f"{dataset}/mocov2_ascl"))
    assert moco.method["queue_size"] == 4096 and moco.views == ["strong", "weak"]


def test_mixup_values_per_sample_and_lambda_one():
    x = torch.arange(4 * 1 * 2 * 2, dtype=torch.float32).view(4, 1, 2, 2)
    perm = partner_permutation(4, "reverse", None, "cpu")
    assert perm.tolist() == [3, 2, 1, 0]
    lam = torch.tensor([1.0, 0.25, 0.5, 0.0])
    mixed, lam_eff = mix_batch(x, perm, lam, "mixup")
    for i in range(4):
        assert torch.allclose(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])
    assert torch.equal(mixed[0], x[0]) and torch.equal(lam_eff, lam)


def test_cutmix_effective_lambda_is_kept_area():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 16, 16)
    partner = torch.ones(64, 1, 16, 16)
    xx = torch.cat([x, partner])
    perm = torch.cat([torch.arange(64, 128), torch.arange(64)])
    lam = sample_lambda(128, 1.0, g, "cpu")
    mixed, lam_eff = mix_batch(xx, perm, lam, "cutmix", g)
    kept = 1.0 - mixed[:64].flatten(1).mean(dim=1)  # share of pixels still from image i (zeros)
    assert torch.allclose(kept, lam_eff[:64])
    # boxes clipped at the border keep more of image i, rounding the box edges at most a row + a column
    assert (lam_eff >= lam - 2 * 16 / 256).all()
    masks = cutmix_masks(3, 8, 8, torch.tensor([1.0, 0.0, 0.75]), g)
    # lam 1: no box; lam 0: a full-size box around a random centre, clipped: at least a quarter
    assert masks[0].sum() == 0 and masks[1].float().mean() >= 0.25


def test_mixing_reproducible_under_seed():
    x = torch.rand(32, 3, 8, 8)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        perm = partner_permutation(32, "random", g, "cpu")
        lam = sample_lambda(32, 0.5, g, "cpu")
        return mix_batch(x, perm, lam, "both", g)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[1].unique().numel() > 16  # one lambda per sample


@pytest.mark.parametrize("recipe, host_name", [
    ("mocov2_ascl", "mocov2"), ("byol_ascl", "byol"),
    ("simclr_bsim", "simclr"), ("mocov2_bsim", "mocov2"), ("byol_bsim", "byol"),
])
def test_plugin_runs_learn(recipe, host_name, tmp_path, fmnist_small):
    cfg = tiny_config(host_name, tmp_path, "optim.epochs=4", "optim.lr=0.05",
                      recipe=f"fashion_mnist/{recipe}", heads=SMALL_HEADS[host_name])
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    rows = read_metrics(res["run_dir"])
    losses = torch.tensor([float(r["loss"]) for r in rows if r.get("loss")])
    by_epoch = losses.view(4, -1).mean(dim=1)
    assert torch.isfinite(losses).all()
    assert by_epoch[3] < by_epoch[:2].max() - 0.02, by_epoch.tolist()
    assert res["knn_last_top1"] > 30.0
    if "bsim" in recipe:
        assert any(r.get("train/bsim") for r in rows)  # the extra term is logged
