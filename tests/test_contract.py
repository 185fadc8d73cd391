"""The method and plug-in contract (relssl.methods.base): what a class must provide, what its declared
capabilities promise on a real training step, how plug-ins find their hosts, and the walkthrough of
docs/adding-a-method.md run exactly as written."""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from relssl.config import load_config
from relssl.engine import pretrain
from relssl.methods import METHODS, PLUGINS, Method, Plugin, StepInfo, build_method, register_method
from relssl.methods.base import (
    CONTRAST,
    ENCODE_QUERY,
    FN_ORACLE,
    KEYS,
    QUEUE_NEGATIVES,
    REGRESS,
    TEMPERATURE,
)
from relssl.methods.plugins import build_plugins, hosts_of
from relssl.nn import build_backbone

from utils import TINY, tiny_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
B = 16


@pytest.fixture
def registry_kept():
    """Whatever a test registers is gone after it."""
    before = dict(METHODS)
    yield
    METHODS.clear()
    METHODS.update(before)


def _step(method_name, tmp_path, labels=True):
    cfg = tiny_config(method_name, tmp_path)
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("convnet_tiny", in_channels=1, cifar_stem=True, maxpool=False)
    method = build_method(cfg.method, backbone, feat_dim)
    extra = type(method).extra_views(cfg.method, 28, list(type(method).default_views))
    views = [torch.randn(B, 1, 28, 28) for _ in type(method).default_views]
    views += [torch.randn(B, 1, o.get("crop_size", 28), o.get("crop_size", 28)) for _, o in extra]
    gen = torch.Generator().manual_seed(0)
    info = StepInfo(step=0, progress=0.0, index=torch.arange(B), generator=gen,
                    labels=torch.randint(0, 3, (B,)) if labels else None)
    return method, views, info, method.training_step(views, info)


def test_every_registered_class_subclasses_the_contract():
    assert set(METHODS) >= {"simclr", "mocov2", "byol", "wcl", "msvq", "ressl", "msf", "nnclr", "pnnclr"}
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and cls.name == name
    for name, cls in PLUGINS.items():
        assert issubclass(cls, Plugin) and cls.name == name


def test_hosts_follow_from_capabilities():
    """The hosts each plug-in had when they were written as name lists, now derived."""
    assert set(hosts_of(PLUGINS["ascl"])) == {"mocov2", "byol"}
    assert set(hosts_of(PLUGINS["bsim"])) == {"simclr", "mocov2", "byol"}
    assert set(hosts_of(PLUGINS["mask_false_negatives"])) == {"simclr", "mocov2", "nnclr", "pnnclr", "wcl"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_declared_capabilities_hold_on_a_real_step(name, tmp_path):
    method, views, info, out = _step(name, tmp_path)
    caps = type(method).capabilities
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert isinstance(method.backbone, nn.Module)
    for key, value in out.items():
        if not key.startswith("_"):
            assert isinstance(value, torch.Tensor) and value.dim() == 0, (name, key)
    if KEYS in caps:
        assert out["_keys"].shape[0] == B and out["_keys"].dim() == 2
    if ENCODE_QUERY in caps:
        assert method.encode_query(views[0]).shape == out["_keys"].shape
    if QUEUE_NEGATIVES in caps:
        assert out["_negatives"].dim() == 2 and out["_negatives"].shape[1] == out["_keys"].shape[1]
    if TEMPERATURE in caps:
        assert method.cfg.temperature > 0
    if CONTRAST in caps:
        q, k = out["_query"], out["_keys"]
        assert method.contrast(q, k, out["_negatives"]).dim() == 0
    if REGRESS in caps:
        assert method.regress(out["_keys"], out["_keys"]).dim() == 0
    if FN_ORACLE in caps:  # the oracle's mode changes the loss of the same step (labels are used)
        torch.manual_seed(0)
        method2, views2, info2, plain = _step(name, tmp_path)
        method2.fn_oracle = "positive"
        torch.manual_seed(0)
        assert not torch.allclose(method2.training_step(views2, info2)["loss"], plain["loss"])


def test_the_contract_is_checked_when_a_class_is_defined():
    @dataclass
    class Cfg:
        temperature: float = 0.1

    with pytest.raises(TypeError, match="must define training_step"):
        type("NoStep", (Method,), {"name": "x", "default_views": ("strong",), "Config": Cfg})
    with pytest.raises(TypeError, match="declares capability 'encode_query' but does not define encode_query"):
        type("NoQuery", (Method,), {"name": "x", "default_views": ("strong",), "Config": Cfg,
                                    "capabilities": frozenset({ENCODE_QUERY}), "training_step": lambda s, v, i: {}})
    with pytest.raises(TypeError, match="unknown capabilities"):
        type("Odd", (Method,), {"name": "x", "default_views": ("strong",), "Config": Cfg,
                                "capabilities": frozenset({"teleport"}), "training_step": lambda s, v, i: {}})
    with pytest.raises(TypeError, match="Config has no temperature"):
        type("NoT", (Method,), {"name": "x", "default_views": ("strong",), "Config": dataclass(type("C", (), {})),
                                "capabilities": frozenset({TEMPERATURE}), "training_step": lambda s, v, i: {}})
    with pytest.raises(TypeError, match="must define Config"):
        type("NoCfg", (Method,), {"name": "x", "default_views": ("strong",), "training_step": lambda s, v, i: {}})
    with pytest.raises(TypeError, match="requires must name"):
        type("Lazy", (Plugin,), {"name": "p", "Config": Cfg})
    clash = type("Clash", (Method,), {"name": "simclr", "default_views": ("strong",), "Config": Cfg,
                                      "training_step": lambda s, v, i: {}})
    with pytest.raises(TypeError, match="already registered"):
        register_method(clash)


@pytest.mark.usefixtures("registry_kept")
def test_plugins_choose_by_capability_not_by_name(tmp_path):
    """A MoCo v2 under another name is an ASCL and BSIM host: ASCL replaces its contrast term (the
    capability), which a name test (host.name == "mocov2") would have skipped."""
    mocov2 = METHODS["mocov2"]
    twin = type("MoCoTwin", (mocov2,), {"name": "mocotwin"})
    register_method(twin)
    assert "mocotwin" in hosts_of(PLUGINS["ascl"]) and "mocotwin" in hosts_of(PLUGINS["bsim"])
    cfg = tiny_config("mocov2", tmp_path)
    backbone, feat_dim = build_backbone("convnet_tiny", in_channels=1, cifar_stem=True, maxpool=False)
    host = twin(backbone, feat_dim, mocov2.Config(**{k: v for k, v in cfg.method.items() if k != "name"}))
    build_plugins({"ascl": {"t1": 0.1, "t2": 0.05, "nn_num": 1, "relation": "ascl"}}, host)
    assert "contrast" in vars(host)  # the instance's term is ASCL's now


def _code_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.usefixtures("fmnist", "registry_kept")
def test_the_walkthrough_method_trains(tmp_path):
    """docs/adding-a-method.md, as written: the class registers, its recipe loads, it trains end to end
    through the engine, and ASCL and BSIM accept it by its capabilities alone."""
    import yaml

    namespace = {"__name__": "walkthrough_simsiam"}
    exec(compile(_code_blocks("python")[0], str(DOC), "exec"), namespace)
    assert METHODS["simsiam"] is namespace["SimSiam"]
    assert "simsiam" in hosts_of(PLUGINS["ascl"]) and "simsiam" in hosts_of(PLUGINS["bsim"])

    recipe = tmp_path / "simsiam.yaml"
    recipe.write_text(_code_blocks("yaml")[0])
    assert yaml.safe_load(recipe.read_text())["method"]["name"] == "simsiam"
    small = ["method.proj_hidden=64", "method.proj_dim=32", "method.pred_hidden=16", "optim.epochs=1",
             "data.subset=256", "data.bank_subset=256", "data.test_subset=128", "optim.lr=0.05"]
    cfg = load_config(recipe, TINY + small + [f"output_dir={tmp_path / 'runs'}"])
    res = pretrain(cfg)
    assert res["finished"] and res["method"] == "simsiam" and res["steps"] == 4
    assert res["knn_last_top1"] is not None and 0 < res["knn_last_top1"] <= 100
    with_bsim = load_config(recipe, TINY + small + ["plugins=[bsim]", f"output_dir={tmp_path / 'runs'}"])
    assert list(with_bsim.plugins) == ["bsim"]
