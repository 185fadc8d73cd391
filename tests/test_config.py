import dataclasses

import pytest

from relssl.config import list_recipes, resolve_recipe
from relssl.config import Config, dump_config, load_config
from relssl.errors import ConfigError


@pytest.mark.parametrize("recipe", list_recipes())
def test_packaged_recipes_load(recipe):
    cfg = load_config(resolve_recipe(recipe))
    assert isinstance(cfg, Config)
    # round trip through YAML gives the same config
    import yaml

    from relssl.config import config_from_dict

    assert config_from_dict(yaml.safe_load(dump_config(cfg))).to_dict() == cfg.to_dict()


def test_overrides_apply():
    cfg = load_config(resolve_recipe("fashion_mnist/mocov2"),
                      ["optim.lr=0.1", "method.queue_size=1000", "data.subset=null", "views=[weak, strong]"])
    assert cfg.optim.lr == 0.1 and cfg.method["queue_size"] == 1000 and cfg.views == ["weak", "strong"]
    assert cfg.method["temperature"] == 0.2  # defaults filled


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr' \\(did you mean 'lr'\\?\\)"),
    (["optimizer.lr=0.1"], "unknown config key 'optimizer'"),
    (["optim.lr=abc"], "optim.lr must be a number"),
    (["optim.lr=-1"], "optim.lr must be > 0"),
    (["optim.epochs=1.5"], "optim.epochs must be an integer"),
    (["optim.name=adam"], "optim.name must be one of sgd, lars"),
    (["method.temperature=0"], "method.temperature must be > 0"),
    (["method.momentum=1.5"], "method.momentum must be in \\[0, 1\\]"),
    (["method.queue_sz=10"], "unknown config key 'method.queue_sz'"),
    (["method.name=simclrr"], "unknown method 'simclrr'"),
    (["trainer.knn_t=0"], "trainer.knn_t \\(temperature\\) must be > 0"),
    (["trainer.precision=fp8"], "trainer.precision must be one of"),
    (["backbone.cifar_stem=maybe"], "backbone.cifar_stem must be true or false"),
    (["augment.strong.blur_pp=0.1"], "augment.strong"),
    (["optim.warmup_epochs=300"], "optim.warmup_epochs must be in"),
    (["lr0.1"], "must look like key=value"),
    # a built-in's kwargs are checked with the config, before data or a run directory
    (["backbone.name=convnet_grid", "backbone.kwargs={widths: [16, 0]}"],
     "backbone.kwargs: backbone convnet_grid: backbone.kwargs.widths must be a list of positive integers"),
    (["backbone.name=convnet", "backbone.kwargs={depth: 3}"], "backbone.kwargs: .*takes backbone.kwargs widths and grid"),
    (["backbone.kwargs={width: 2}"], "backbone.kwargs: backbone resnet18 takes no backbone.kwargs"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(resolve_recipe("fashion_mnist/mocov2"), override)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


SEED_RECIPES = ("msvq", "pnnclr", "wcl", "mocov2_ascl", "byol_ascl")
BASELINES = ("simclr", "mocov2", "byol", "simclr_bsim", "mocov2_bsim", "byol_bsim")


def test_every_dataset_with_a_seed_recipe_has_its_baselines():
    """The papers compare each seed method with SimCLR, MoCo v2 and BYOL on their datasets: a dataset
    that ships a seed recipe ships those baselines and the BSIM combinations too, with the same
    backbone, optimiser, batch and epochs as its seed recipes (equal budget)."""
    from importlib.resources import files

    root = files("relssl") / "configs"
    datasets = [d.name for d in root.iterdir() if d.is_dir()
                and any((d / f"{r}.yaml").is_file() for r in SEED_RECIPES)]
    assert {"cifar10", "cifar100", "stl10", "tiny_imagenet", "fashion_mnist", "medmnist", "imagenet"} <= set(datasets)
    for ds in datasets:
        seed = load_config(resolve_recipe(f"{ds}/" + next(r for r in SEED_RECIPES if (root / ds / f"{r}.yaml").is_file())))
        for name in BASELINES:
            cfg = load_config(resolve_recipe(f"{ds}/{name}"))
            assert cfg.backbone == seed.backbone, (ds, name)
            # the same data settings; an unset crop size is the dataset's default (32 on Fashion-MNIST)
            assert dataclasses.replace(cfg.data, crop_size=cfg.data.crop_size or 32) == dataclasses.replace(
                seed.data, crop_size=seed.data.crop_size or 32), (ds, name)
            assert (cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.warmup_epochs) == (
                seed.optim.batch_size, seed.optim.epochs, seed.optim.warmup_epochs), (ds, name)
            assert ("bsim" in cfg.plugins) == name.endswith("_bsim"), (ds, name)
