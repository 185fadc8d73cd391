"""No training step calls a function that makes the host wait for a GPU (DEVELOPERS.md).

On the CPU nothing waits, so the rule is checked by what a step calls: during every method's and
plug-in's training step (diagnostic steps excepted, where syncs are allowed) the functions known to
synchronise a CUDA device raise. A method that reads a tensor's value on the host in its step fails
here on any machine; ``tests/test_losses_graph.py`` adds the CUDA-side check where a GPU exists.
"""

import contextlib

import lightning as L
import pytest
import torch

from relssl.data import DatasetSplits
from relssl.engine import pretrain
from relssl.losses import _common

from test_precision import CASES
from utils import tiny_config


class HostSync(AssertionError):
    pass


def _raiser(what):
    def fail(*args, **kwargs):
        raise HostSync(f"{what} synchronises the device in a training step")
    return fail


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


@contextlib.contextmanager
def sync_forbidden():
    """Make every known host-synchronising call raise, inside the ``with`` block only."""
    getitem = torch.Tensor.__getitem__

    def checked_getitem(self, index):
        if _bool_index(index):
            raise HostSync("boolean-mask indexing synchronises the device in a training step")
        return getitem(self, index)

    patches = {
        (torch, "unique"): _raiser("torch.unique"), (torch.Tensor, "unique"): _raiser("Tensor.unique"),
        (torch, "equal"): _raiser("torch.equal"), (torch.Tensor, "equal"): _raiser("Tensor.equal"),
        (torch, "nonzero"): _raiser("torch.nonzero"), (torch.Tensor, "nonzero"): _raiser("Tensor.nonzero"),
        (torch, "masked_select"): _raiser("torch.masked_select"),
        (torch.Tensor, "item"): _raiser("Tensor.item"), (torch.Tensor, "tolist"): _raiser("Tensor.tolist"),
        (torch.Tensor, "__bool__"): _raiser("bool(tensor)"), (torch.Tensor, "__float__"): _raiser("float(tensor)"),
        (torch.Tensor, "__int__"): _raiser("int(tensor)"), (torch.Tensor, "__getitem__"): checked_getitem,
    }
    def on_device(ok, fn, rule, found):  # what a GPU runs: a device-side assert, no read-back
        torch._assert_async(ok, f"{fn}: {rule}")

    patches[(_common, "values_hold")] = on_device
    saved = {key: getattr(*key) for key in patches}
    try:
        for (owner, name), fn in patches.items():
            setattr(owner, name, fn)
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


class _Guard(L.Callback):
    """Runs the method's ``training_step`` and every plug-in's ``after_host_step`` under
    :func:`sync_forbidden` on the steps that are not diagnostic steps."""

    def __init__(self):
        self.guarded = 0

    def on_train_start(self, trainer, pl_module):
        def guard(fn, info_at):
            def wrapped(*args, **kwargs):
                if args[info_at].diagnose:
                    return fn(*args, **kwargs)
                self.guarded += 1
                with sync_forbidden():
                    return fn(*args, **kwargs)
            return wrapped

        pl_module.method.training_step = guard(pl_module.method.training_step, 1)  # (views, info)
        for plugin in pl_module.plugins:
            plugin.after_host_step = guard(plugin.after_host_step, 2)  # (host, views, info, out)


@pytest.fixture(scope="module")
def fmnist_small(fmnist):
    return DatasetSplits(info=fmnist.info, pretrain=fmnist.pretrain.subset(192, seed=0),
                         bank=fmnist.bank.subset(128, seed=1), test=fmnist.test.subset(64, seed=2))


def test_the_guard_catches_what_it_names():
    x = torch.arange(4.0)
    with sync_forbidden():
        for bad in (lambda: x.sum().item(), lambda: torch.unique(x), lambda: bool(x.any()),
                    lambda: x[x > 1], lambda: float(x.max()), lambda: x.nonzero(), lambda: torch.equal(x, x)):
            with pytest.raises(HostSync):
                bad()
        assert torch.where(x > 1, x, 0.0).sum().shape == ()  # static-shape code passes
    assert x.sum().item() == 6.0  # restored afterwards


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_step_never_syncs_the_host(case, tmp_path, fmnist_small):
    method, recipe, extra = CASES[case]
    guard = _Guard()
    # diagnostics every other step: those steps may sync, the others must not
    cfg = tiny_config(method, tmp_path, "optim.epochs=1", "trainer.knn_at_start=false", "trainer.knn_every=0",
                      "trainer.diagnose_every=2", *extra, recipe=recipe)
    pretrain(cfg, splits=fmnist_small, quiet=True, extra_callbacks=[guard])
    assert guard.guarded >= 1  # the guard really wrapped steps (3 steps, every other one diagnostic)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", ["wcl", "wcl multicrop", "mocov2+ascl", "byol+ascl"])
def test_training_step_never_syncs_a_gpu(case):
    """On a GPU, the whole training step (not only the loss) under torch's sync debug mode."""
    from relssl.methods import METHODS, StepInfo, method_config
    from relssl.methods.plugins import build_plugins, plugins_config
    from relssl.nn import build_backbone

    method = CASES[case][0]
    backbone, dim = build_backbone("convnet_tiny", in_channels=1)
    section = {"name": method, "proj_hidden": 32, "proj_dim": 16}
    if method == "mocov2":
        section["queue_size"] = 256
    if method == "byol":
        section["pred_hidden"] = 32
    if case == "wcl multicrop":
        section["multicrop"] = 2
    m = METHODS[method](backbone, dim, METHODS[method].Config(**{k: v for k, v in method_config(section).items()
                                                                 if k != "name"})).cuda()
    if "+" in case:
        build_plugins(plugins_config([case.split("+")[1]], method), m)
    n_views = 2 + section.get("multicrop", 0)
    views = [torch.randn(64, 1, 16 if i >= 2 else 32, 16 if i >= 2 else 32, device="cuda") for i in range(n_views)]
    info = StepInfo(step=1, progress=0.1, index=torch.arange(64, device="cuda"),
                    generator=torch.Generator(device="cuda").manual_seed(0))
    m.training_step(views, info)  # warm-up: lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = m.training_step(views, info)
        out["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
