"""Any backbone: torchvision / timm models by name, ViTs sized for small crops, the user's own module
(an instance, a registered factory, an import path), local weights in, exported weights out."""

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from relssl.config import load_config, resolve_recipe, resolve_recipes
from relssl.engine import pretrain
from relssl.engine.optim import build_optimizer
from relssl.errors import ConfigError
from relssl.nn import make_backbone, register_backbone
from relssl.nn.zoo import BACKBONE_FACTORIES, vit_patch_size
from utils import SMALL_HEADS, TINY, digest, read_metrics

timm = pytest.importorskip("timm")

# a ViT small enough for a CPU test step: 2 blocks of 48-d, 3 heads (timm's ViT-Tiny otherwise)
TINY_VIT = ["backbone.kwargs={depth: 2, embed_dim: 48, num_heads: 3}"]
NOT_BACKBONE = [t for t in TINY if not t.startswith("backbone.")]


def vit_config(method, tmp_path, *extra):
    return load_config(resolve_recipes([f"fashion_mnist/{method}", "backbones/vit_tiny"]),
                       NOT_BACKBONE + SMALL_HEADS[method] + TINY_VIT
                       + ["optim.epochs=1", "optim.warmup_epochs=0", f"output_dir={tmp_path}"] + list(extra))


def features(net, x):
    net.eval()
    with torch.no_grad():
        return net(x)


# ----------------------------------------------------------------------------- models by name

@pytest.mark.parametrize("name, channels, dim, head", [
    ("torchvision:resnet18", 1, 512, "fc"),
    ("torchvision:mobilenet_v3_small", 3, 1024, "classifier.3"),
    ("torchvision:efficientnet_b0", 1, 1280, "classifier.1"),
    ("torchvision:convnext_tiny", 3, 768, "classifier.2"),
    ("timm:resnet18", 1, 512, "fc"),
    ("timm:convnext_atto", 3, 320, "head.fc"),
])
def test_library_models_by_name_give_pooled_features(name, channels, dim, head):
    b = make_backbone(name, in_channels=channels, image_size=32)
    assert b.feat_dim == dim and b.arch["head"] == head and b.arch["in_channels"] == channels
    out = b.module(torch.randn(3, channels, 32, 32))
    assert out.shape == (3, dim)
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in b.module.modules())


def test_resnet_like_models_get_the_cifar_stem_and_lose_the_maxpool():
    for name in ("torchvision:resnet18", "timm:resnet18"):
        small = make_backbone(name, in_channels=3, cifar_stem=True, maxpool=False).module
        assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
        assert isinstance(small.maxpool, nn.Identity)
        big = make_backbone(name, in_channels=3, cifar_stem=False, maxpool=True).module
        assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    # a 32-px image keeps a 4x4 map to the last stage with the CIFAR stem, 1x1 with ImageNet's
    small = make_backbone("torchvision:resnet18", in_channels=3).module
    trunk = nn.Sequential(*list(small.children())[:-2])
    assert trunk(torch.randn(1, 3, 32, 32)).shape[-1] == 4


@pytest.mark.parametrize("crop, default, want", [(32, 16, 4), (28, 16, 4), (64, 16, 8), (96, 16, 8), (224, 16, 16),
                                                 (32, 4, 4)])
def test_vit_patch_leaves_at_least_7x7_patches(crop, default, want):
    assert vit_patch_size(crop, default) == want
    assert crop % want == 0 and crop // want >= 7


def test_timm_vit_is_sized_for_the_crop_and_kwargs_win():
    b = make_backbone("timm:vit_tiny_patch16_224", in_channels=1, kwargs={"depth": 1}, image_size=28)
    assert b.arch["kwargs"] == {"depth": 1, "img_size": 28, "patch_size": 4}
    assert b.module.patch_embed.grid_size == (7, 7) and b.feat_dim == 192
    own = make_backbone("timm:vit_tiny_patch16_224", in_channels=3, kwargs={"depth": 1, "patch_size": 8},
                        image_size=32)
    assert own.arch["kwargs"]["patch_size"] == 8 and own.module.patch_embed.grid_size == (4, 4)
    # evaluation at another size than the crop: position embeddings resampled (dynamic_img_size)
    b = make_backbone("timm:vit_tiny_patch16_224", in_channels=3, kwargs={"depth": 1}, image_size=64, eval_size=96)
    assert b.arch["kwargs"]["dynamic_img_size"] is True
    assert b.module(torch.randn(2, 3, 96, 96)).shape == (2, 192)


@pytest.mark.parametrize("name, kwargs, size, message", [
    ("torchvision:resnet1800", {}, 32, "torchvision has no classification model 'resnet1800'; close: resnet"),
    ("timm:vit_tinyy", {}, 32, "timm has no model 'vit_tinyy'"),
    ("timm:vit_tiny_patch16_224", {"num_classes": 10}, 32, "backbone.kwargs.num_classes is set by relssl"),
    ("torchvision:vit_b_16", {}, 32, "cannot take 32-px images with 3 channel\\(s\\).*set backbone.kwargs"),
    ("torchvision:resnet18", {"widthh": 2}, 32, "does not take backbone.kwargs"),
    ("torchvision:squeezenet1_0", {}, 64, "no Linear classifier.*pretrain\\(cfg, backbone=...\\)"),
    ("resnet18", {"depth": 2}, 32, "takes no backbone.kwargs"),
    ("nosuchpkg.nets:make", {}, 32, "cannot import nosuchpkg.nets"),
    ("object:mine.Net", {}, 32, "passed to pretrain\\(\\) as a Python object"),
])
def test_a_backbone_that_cannot_be_built_fails_in_one_line(name, kwargs, size, message):
    with pytest.raises(ValueError, match=message) as err:
        make_backbone(name, in_channels=3, kwargs=kwargs, image_size=size)
    assert "\n" not in str(err.value)


def test_a_bad_backbone_is_refused_by_the_config_and_before_the_run_directory(tmp_path, fmnist_small):
    with pytest.raises(ConfigError, match="backbone.name: torchvision has no classification model"):
        load_config(resolve_recipe("fashion_mnist/simclr"), ["backbone.name=torchvision:resnett18"])
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"),
                      NOT_BACKBONE + ["backbone.name=torchvision:vit_b_16", f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match="cannot take 32-px images with 1 channel"):
        pretrain(cfg, splits=fmnist_small, quiet=True)
    assert not (tmp_path / "runs").exists()


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ValueError, match=r"needs timm, which is not installed: pip install 'relssl\[timm\]'"):
        make_backbone("timm:vit_tiny_patch16_224", image_size=32)


def test_a_module_that_returns_feature_maps_is_refused():
    with pytest.raises(ValueError, match="must return one feature vector per image.*AdaptiveAvgPool2d"):
        make_backbone("mine", in_channels=1, module=nn.Conv2d(1, 4, 3), image_size=32)


def test_split_batchnorm_on_a_model_without_batchnorm_is_reported(caplog):
    with caplog.at_level("WARNING", logger="relssl"):
        make_backbone("timm:vit_tiny_patch16_224", in_channels=1, bn_splits=8, kwargs={"depth": 1}, image_size=32)
    assert "backbone.bn_splits=8 has no effect" in caplog.text


# ----------------------------------------------------------------------------- your own module

class TinyNet(nn.Module):
    """A backbone of the user's: no BatchNorm, LayerNorm on the pooled feature."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.norm = nn.LayerNorm(width * 4)

    def forward(self, x):
        return self.norm(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def test_pretrain_takes_your_own_module_and_evaluation_takes_a_new_instance(tmp_path, fmnist_small):
    from relssl.evaluate import evaluate_knn, prepare

    torch.manual_seed(0)
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"),
                      NOT_BACKBONE + SMALL_HEADS["simclr"] + ["optim.epochs=1", f"output_dir={tmp_path}"])
    res = pretrain(cfg, splits=fmnist_small, quiet=True, backbone=net)
    assert cfg.backbone.name == "resnet18"  # the caller's config is left as it is
    assert not torch.equal(net.conv.weight, before["conv.weight"])  # trained in place
    run = res["run_dir"]
    assert "name: object:test_backbones.TinyNet" in (Path(run) / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="passed to pretrain\\(\\) as a Python object.*backbone=") as err:
        prepare(run, splits=fmnist_small, device="cpu")
    assert "\n" not in str(err.value)
    fresh = TinyNet()
    fresh_weight = fresh.conv.weight.clone()
    s = prepare(run, splits=fmnist_small, device="cpu", backbone=fresh)
    x = torch.randn(4, 1, 32, 32)
    assert torch.allclose(features(s.backbone, x), features(net, x), atol=1e-6)
    assert torch.equal(fresh.conv.weight, fresh_weight)  # the instance given is a template, never changed
    knn = evaluate_knn(s, protocol="weighted", baselines=True)
    assert knn["results"]["weighted"]["top1"] > 0 and "random_init" in knn["baselines"]
    # resuming such a run needs the module again
    with pytest.raises(ConfigError, match="as a Python object"):
        pretrain(None, splits=fmnist_small, resume=run, quiet=True)


FACTORY_SOURCE = textwrap.dedent('''
    from torch import nn

    def make_net(in_channels, width=8):
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
''')


def test_an_import_path_factory_trains_and_is_rebuilt_from_the_checkpoint(tmp_path, fmnist_small, monkeypatch):
    from relssl.evaluate import evaluate_knn, export_backbone, load_backbone, prepare

    (tmp_path / "user_nets.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(resolve_recipe("fashion_mnist/mocov2"),
                      NOT_BACKBONE + SMALL_HEADS["mocov2"] + ["backbone.name=user_nets:make_net",
                                                              "backbone.kwargs.width=12", "optim.epochs=1",
                                                              f"output_dir={tmp_path / 'runs'}"])
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    s = prepare(res["run_dir"], splits=fmnist_small, device="cpu")
    assert s.backbone[0].out_channels == 12 and s.backbone[0].in_channels == 1
    assert evaluate_knn(s, protocol="weighted")["feature_dim"] == 12
    out, meta = export_backbone(res["run_dir"], tmp_path / "b.safetensors", splits=fmnist_small)
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(features(load_backbone(out), x), features(s.backbone, x), atol=1e-6)


def test_a_registered_factory_is_a_backbone_name():
    @register_backbone("test_mlp")
    def mlp(in_channels, hidden=5):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden))

    try:
        b = make_backbone("test_mlp", in_channels=1, kwargs={"hidden": 7}, image_size=28)
        assert b.feat_dim == 7 and b.arch["library"] == "registered"
        load_config(resolve_recipe("fashion_mnist/simclr"), ["backbone.name=test_mlp"])  # validates
    finally:
        BACKBONE_FACTORIES.pop("test_mlp")
    with pytest.raises(ValueError, match="no ':'"):
        register_backbone("a:b")


# ----------------------------------------------------------------------------- weights in

def test_weights_in_torchvision_and_timm_layouts(tmp_path, fmnist_small):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None)  # ImageNet layout: 7x7 stem, max-pool, fc
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    b = make_backbone("torchvision:resnet18", in_channels=3, cifar_stem=False, maxpool=True)
    from relssl.nn import load_weights

    load_weights(b.module, tmp_path / "r18.pth", b.arch["head"])
    assert torch.equal(b.module.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=1)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    b = make_backbone("timm:vit_tiny_patch16_224", in_channels=3, kwargs={"depth": 1}, image_size=32)
    load_weights(b.module, tmp_path / "vit.safetensors", b.arch["head"])  # the 10-class head is ignored
    assert torch.equal(b.module.pos_embed, vit.pos_embed)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(features(b.module, x), vit.forward_head(vit.forward_features(x), pre_logits=True))
    # through the config, before pretraining: the weights are where training starts
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"),
                      NOT_BACKBONE + SMALL_HEADS["simclr"] + [
                          "backbone.name=timm:vit_tiny_patch16_224", "backbone.kwargs={depth: 1}",
                          f"backbone.weights={tmp_path / 'vit1.safetensors'}", "optim.max_steps=1",
                          f"output_dir={tmp_path / 'runs'}"])
    vit1 = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=1, img_size=32, patch_size=4, depth=1)
    save_file(vit1.state_dict(), str(tmp_path / "vit1.safetensors"))
    from relssl.engine.module import PretrainModule

    module = PretrainModule(cfg, fmnist_small)
    assert torch.equal(module.backbone.patch_embed.proj.weight, vit1.patch_embed.proj.weight)


@pytest.mark.parametrize("case, message", [
    ("missing", "backbone.weights file .* does not exist"),
    ("suffix", "must be one of .safetensors, .pth"),
    ("not_a_state_dict", "does not hold a state dict"),
    ("garbage", "cannot read backbone.weights file"),
    ("other_arch", "missing keys .*unexpected keys .*another architecture"),
    ("imagenet_stem", "conv1 differs: ImageNet weights need backbone.cifar_stem=false"),
    ("channels", "shape mismatches"),
])
def test_weights_that_do_not_fit_fail_in_one_line_before_the_run_directory(case, message, tmp_path, fmnist_small):
    path = tmp_path / "w.pth"
    name, stem = "resnet18", "true"
    if case == "missing":
        path = tmp_path / "absent.pth"
    elif case == "suffix":
        path = tmp_path / "w.npz"
        path.write_bytes(b"x")
    elif case == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    elif case == "garbage":
        path.write_bytes(b"not a torch file")
    elif case == "other_arch":
        torch.save(make_backbone("convnet_tiny", 1).module.state_dict(), path)
    elif case == "imagenet_stem":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    elif case == "channels":
        torch.save(make_backbone("convnet_tiny", 3).module.state_dict(), path)
        name = "convnet_tiny"
    runs = tmp_path / "runs"
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"),
                      NOT_BACKBONE + [f"backbone.name={name}", f"backbone.cifar_stem={stem}",
                                      f"backbone.weights={path}", f"output_dir={runs}"])
    with pytest.raises(ConfigError, match=message) as err:
        pretrain(cfg, splits=fmnist_small, quiet=True)
    assert "\n" not in str(err.value) and not runs.exists()


def test_pretrained_is_read_as_the_former_name_of_weights(tmp_path):
    torch.save(make_backbone("convnet_tiny", 1).module.state_dict(), tmp_path / "w.pth")
    cfg = load_config(resolve_recipe("fashion_mnist/simclr"), [f"backbone.pretrained={tmp_path / 'w.pth'}"])
    assert cfg.backbone.weights == str(tmp_path / "w.pth") and cfg.backbone.pretrained is None


# ----------------------------------------------------------------------------- the ViT recipe, end to end

@pytest.mark.parametrize("recipe", [r for r in __import__("relssl.config", fromlist=["x"]).list_recipes()
                                    if r.startswith("fashion_mnist/")])
def test_the_vit_recipe_lays_over_every_method_recipe(recipe):
    cfg = load_config(resolve_recipes([recipe, "backbones/vit_tiny"]))
    assert cfg.backbone.name == "timm:vit_tiny_patch16_224" and cfg.backbone.bn_splits == 1
    assert (cfg.optim.name, cfg.optim.exclude_bn_bias, cfg.optim.grad_clip) == ("adamw", True, 3.0)
    assert cfg.method["name"] == load_config(resolve_recipe(recipe)).method["name"]


def test_a_backbone_recipe_alone_is_refused():
    with pytest.raises(ConfigError, match="is a backbone recipe: lay it over a method recipe"):
        resolve_recipes(["backbones/vit_tiny"])


def test_vit_optimizer_skips_decay_on_norms_biases_position_embedding_and_class_token():
    b = make_backbone("timm:vit_tiny_patch16_224", in_channels=1, kwargs={"depth": 1}, image_size=32)
    cfg = load_config(resolve_recipes(["fashion_mnist/simclr", "backbones/vit_tiny"]))
    opt = build_optimizer(b.module, cfg.optim, global_batch=512)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    decayed, free = opt.param_groups
    names = {id(p): n for n, p in b.module.named_parameters()}
    free_names = {names[id(p)] for p in free["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= free_names
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decayed["params"])
    assert decayed["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    assert math.isclose(opt.param_groups[0]["lr"], 5e-4 * 512 / 256)


@pytest.mark.parametrize("method", ["simclr", "mocov2", "msvq"])
def test_methods_train_a_tiny_vit_end_to_end(method, tmp_path, fmnist_small):
    res = pretrain(vit_config(method, tmp_path), splits=fmnist_small, quiet=True)
    assert 10 < res["knn_last_top1"] <= 100
    text = (Path(res["run_dir"]) / "config.yaml").read_text()
    assert "img_size: 32" in text and "patch_size: 4" in text  # the architecture as built
    trainer_clip = load_config(Path(res["run_dir"]) / "config.yaml").optim.grad_clip
    assert trainer_clip == 3.0


def test_a_vit_run_at_28_px_is_rebuilt_for_28_px_by_evaluation_and_export(tmp_path, fmnist_small):
    from relssl.evaluate import evaluate_knn, export_backbone, load_backbone, prepare

    res = pretrain(vit_config("simclr", tmp_path, "data.crop_size=28", "optim.max_steps=1"), splits=fmnist_small,
                   quiet=True)
    s = prepare(res["run_dir"], splits=fmnist_small, device="cpu")
    assert s.eval_size == 28 and s.backbone.patch_embed.img_size == (28, 28)
    assert evaluate_knn(s, protocol="weighted")["results"]["weighted"]["top1"] > 10
    out, _ = export_backbone(res["run_dir"], tmp_path / "v.safetensors")  # no dataset: sizes from the config
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(features(load_backbone(out), x), features(s.backbone, x), atol=1e-5)


def test_a_vit_trains_in_the_gpu_configuration(tmp_path, fmnist_small, monkeypatch):
    """bf16 autocast with weights and views in channels_last (forced on the CPU, as in test_precision)."""
    from relssl.engine.module import PretrainModule

    monkeypatch.setattr(PretrainModule, "_channels_last", lambda self: True)
    res = pretrain(vit_config("mocov2", tmp_path, "trainer.precision=bf16-mixed"), splits=fmnist_small, quiet=True)
    losses = torch.tensor([float(r["loss"]) for r in read_metrics(res["run_dir"]) if r.get("loss")])
    assert len(losses) == 600 // 64 and torch.isfinite(losses).all()
    assert res["knn_last_top1"] > 10


def test_a_vit_run_exports_weights_that_load_into_timm_itself(tmp_path, fmnist_small):
    from relssl.evaluate import embed_checkpoint, export_backbone, load_backbone, prepare
    from relssl.evaluate.export import export_onnx

    res = pretrain(vit_config("simclr", tmp_path), splits=fmnist_small, quiet=True)
    out, meta = export_backbone(res["run_dir"], tmp_path / "vit.safetensors", splits=fmnist_small)
    from safetensors.torch import load_file

    arch = meta["arch"]
    plain = timm.create_model(arch["model"], num_classes=0, in_chans=arch["in_channels"], **arch["kwargs"])
    plain.load_state_dict(load_file(str(out)))  # strict: no key renamed
    assert meta["constructor"].startswith("net = timm.create_model('vit_tiny_patch16_224', num_classes=0, in_chans=1")
    s = prepare(res["run_dir"], splits=fmnist_small, device="cpu")
    x = torch.randn(3, 1, 32, 32)
    ref = features(s.backbone, x)
    assert torch.allclose(features(plain, x), ref, atol=1e-5)
    assert torch.allclose(features(load_backbone(out), x), ref, atol=1e-5)
    onnx_file, _ = export_onnx(res["run_dir"], tmp_path / "vit.onnx", splits=fmnist_small)  # LayerNorm, attention
    import onnxruntime

    onnx_out = onnxruntime.InferenceSession(str(onnx_file)).run(None, {"images": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(onnx_out), ref, atol=1e-4)
    emb = embed_checkpoint(res["run_dir"], split="test", splits=fmnist_small, device="cpu")
    assert emb.embeddings.shape == (len(fmnist_small.test), 48) and torch.isfinite(emb.embeddings).all()


def test_a_torchvision_run_exports_weights_that_load_into_torchvision_itself(tmp_path, fmnist_small):
    from safetensors.torch import load_file

    from relssl.evaluate import export_backbone, prepare

    cfg = load_config(resolve_recipe("fashion_mnist/simclr"),
                      NOT_BACKBONE + SMALL_HEADS["simclr"] + ["backbone.name=torchvision:mobilenet_v3_small",
                                                              "optim.max_steps=2", f"output_dir={tmp_path}"])
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    out, meta = export_backbone(res["run_dir"], tmp_path / "mb.safetensors", splits=fmnist_small)
    arch = meta["arch"]
    assert arch["head"] == "classifier.3" and arch["first_conv"] == "features.0.0" and meta["torchvision_compatible"]
    plain = torchvision.models.get_model("mobilenet_v3_small")
    plain.set_submodule(arch["head"], nn.Identity())
    first = plain.get_submodule(arch["first_conv"])
    plain.set_submodule(arch["first_conv"], nn.Conv2d(1, first.out_channels, first.kernel_size, first.stride,
                                                       first.padding, bias=False))
    plain.load_state_dict(load_file(str(out)))  # strict
    s = prepare(res["run_dir"], splits=fmnist_small, device="cpu")
    x = torch.randn(3, 1, 32, 32)
    assert torch.allclose(features(plain, x), features(s.backbone, x), atol=1e-5)


def test_the_cli_lays_the_vit_recipe_over_a_method_recipe(tmp_path, capsys):
    from relssl.cli import main

    code = main(["pretrain", "fashion_mnist/byol", "backbones/vit_tiny", "backbone.kwargs={depth: 1, embed_dim: 24, "
                 "num_heads: 2}", "data.subset=256", "data.bank_subset=256", "data.test_subset=128", "optim.max_steps=2",
                 "optim.batch_size=64", *SMALL_HEADS["byol"], "trainer.progress_bar=false", "trainer.log_every_n_steps=1", "trainer.knn_every=1",
                 "trainer.knn_k=20", "trainer.accelerator=cpu", f"output_dir={tmp_path}"])
    assert code == 0
    run = next(tmp_path.iterdir())
    assert "timm:vit_tiny_patch16_224" in (run / "config.yaml").read_text()
    before = digest(tmp_path)
    assert main(["pretrain", "backbones/vit_tiny", f"output_dir={tmp_path}"]) == 2
    assert "lay it over a method recipe" in capsys.readouterr().err
    assert digest(tmp_path) == before


def test_a_run_saved_before_the_backbone_keys_existed_still_resumes(tmp_path, fmnist_small):
    """Runs from before backbone.kwargs / weights and optim.betas / grad_clip: their checkpoint and
    config.yaml lack those keys (and say backbone.pretrained); the defaults are no change."""
    import yaml

    from relssl.engine.checkpoint import load_checkpoint_file
    from test_engine import _Crash
    from utils import tiny_config

    extra = ["optim.epochs=2", "trainer.knn_every=0", "trainer.knn_at_start=false"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(tiny_config("mocov2", tmp_path, *extra), splits=fmnist_small, quiet=True, extra_callbacks=[_Crash(1)])
    run = next(tmp_path.iterdir())

    def as_before(cfg):
        for key in ("kwargs", "weights"):
            cfg["backbone"].pop(key)
        cfg["backbone"]["pretrained"] = None
        for key in ("betas", "grad_clip"):
            cfg["optim"].pop(key)
        return cfg

    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint_file(ckpt_path)
    as_before(ckpt["hyper_parameters"]["config"])
    torch.save(ckpt, ckpt_path)
    (run / "config.yaml").write_text(yaml.safe_dump(as_before(yaml.safe_load((run / "config.yaml").read_text()))))
    res = pretrain(None, splits=fmnist_small, resume=run, quiet=True)
    assert res["steps"] == 2 * (600 // 64)


def test_the_own_module_example_of_the_docs_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/backbones.md, "Your own module": its Python, with the run shrunk to a few hundred images."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "class MyNet" in b)
    overrides = '["backbone.bn_splits=1", "optim.epochs=5", "optim.warmup_epochs=1"]'
    assert overrides in block
    shrunk = ('["backbone.bn_splits=1", "optim.epochs=1", "optim.warmup_epochs=0", "optim.batch_size=64", "data.subset=512", '
              '"data.bank_subset=512", "data.test_subset=256", "trainer.progress_bar=false", "trainer.accelerator=cpu", '
              '"trainer.knn_every=1", "trainer.knn_k=20", "trainer.monitor_subset=0"]')
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(block.replace(overrides, shrunk), "docs/backbones.md", "exec"), {"__name__": "__main__"})
    top1 = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 10 < top1 <= 100
    run = next((tmp_path / "runs").iterdir())
    assert "name: object:__main__.MyNet" in (run / "config.yaml").read_text()
