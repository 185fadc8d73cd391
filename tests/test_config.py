import pytest

from relssl.cli import list_recipes, resolve_recipe
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
