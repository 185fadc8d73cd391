"""The GPU configuration's code paths, exercised on the CPU: bf16 autocast and channels_last.

On a GPU a run trains under ``bf16-mixed`` with the weights and the views in channels_last. Neither
needs CUDA to be exercised: Lightning's ``bf16-mixed`` autocasts on the CPU too, and channels_last
is the default on every device (``backbone.channels_last``; the tests below force it on whatever the
config says, so that they keep testing the GPU path if the default changes). So every
method and plug-in runs its real training step the way it runs on a GPU, and these tests check
that autocast really engaged (the backbone computes in bf16), that the layout really changed,
that queues stay float32, and that channels_last is a layout only (same losses as contiguous).
"""

import lightning as L
import pytest
import torch

from relssl.data import DatasetSplits
from relssl.engine import pretrain
from relssl.engine.module import PretrainModule
from relssl.nn import FeatureQueue

from utils import read_metrics, tiny_config

CASES = {  # name: (method, recipe, extra overrides)
    "simclr": ("simclr", None, []), "mocov2": ("mocov2", None, []), "byol": ("byol", None, []),
    "msvq": ("msvq", None, ["optim.warmup_epochs=0"]), "ressl": ("ressl", None, ["optim.warmup_epochs=0"]),
    "msf": ("msf", None, []), "wcl": ("wcl", None, []), "nnclr": ("nnclr", None, []), "pnnclr": ("pnnclr", None, []),
    "mocov2+ascl": ("mocov2", "fashion_mnist/mocov2_ascl", []),
    "byol+ascl": ("byol", "fashion_mnist/byol_ascl", []),
    "simclr+bsim": ("simclr", "fashion_mnist/simclr_bsim", []),
    "mocov2+bsim": ("mocov2", "fashion_mnist/mocov2_bsim", []),
    "byol+bsim": ("byol", "fashion_mnist/byol_bsim", []),
    "simclr+mask_false_negatives": ("simclr", "fashion_mnist/simclr_mask_false_negatives", []),
    "wcl multicrop": ("wcl", None, ["method.multicrop=2"]),
}


@pytest.fixture(scope="module")
def fmnist_tiny(fmnist):
    return DatasetSplits(info=fmnist.info, pretrain=fmnist.pretrain.subset(256, seed=0),
                         bank=fmnist.bank.subset(256, seed=1), test=fmnist.test.subset(128, seed=2))


class _Probe(L.Callback):
    """Records the dtype of the backbone's output and the layout of its input in training steps,
    and the dtypes and layouts of the module's tensors when training ends."""

    def __init__(self):
        self.out_dtypes, self.in_channels_last, self.handles = set(), set(), []

    def on_train_start(self, trainer, pl_module):
        def pre(mod, args):
            if mod.training:
                self.in_channels_last.add(args[0].is_contiguous(memory_format=torch.channels_last))

        def post(mod, args, out):
            if mod.training:
                self.out_dtypes.add(out.dtype)

        self.handles = [pl_module.backbone.register_forward_pre_hook(pre),
                        pl_module.backbone.register_forward_hook(post)]

    def on_train_end(self, trainer, pl_module):
        for h in self.handles:
            h.remove()
        convs = [m.weight for m in pl_module.method.modules() if isinstance(m, torch.nn.Conv2d)]
        self.weights_channels_last = {w.is_contiguous(memory_format=torch.channels_last) for w in convs}
        self.param_dtypes = {p.dtype for p in pl_module.method.parameters()}
        self.queue_dtypes = {b.dtype for m in pl_module.method.modules() if isinstance(m, FeatureQueue)
                             for name, b in m.named_buffers() if b.is_floating_point()}


@pytest.fixture
def force_channels_last(monkeypatch):
    monkeypatch.setattr(PretrainModule, "_channels_last", lambda self: True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_channels_last_step_of_every_method(case, tmp_path, fmnist_tiny, force_channels_last):
    method, recipe, extra = CASES[case]
    probe = _Probe()
    cfg = tiny_config(method, tmp_path, "optim.epochs=1", "trainer.precision=bf16-mixed",
                      "trainer.knn_at_start=false", "trainer.diagnose_every=2", *extra, recipe=recipe)
    res = pretrain(cfg, splits=fmnist_tiny, quiet=True, extra_callbacks=[probe])
    losses = [float(r["loss"]) for r in read_metrics(res["run_dir"]) if r.get("loss")]
    assert len(losses) == 256 // 64 and all(torch.isfinite(torch.tensor(losses)))
    assert probe.out_dtypes == {torch.bfloat16}  # autocast engaged: the backbone computed in bf16
    assert probe.in_channels_last == {True}  # the views reach the backbone in channels_last
    assert probe.weights_channels_last == {True}  # and so do the conv weights, teachers included
    assert probe.param_dtypes == {torch.float32}  # master weights stay float32
    assert probe.queue_dtypes <= {torch.float32}  # bf16 keys are stored as float32
    assert res["knn_last_top1"] is not None and res["knn_last_top1"] > 10.0


@pytest.mark.parametrize("setting, want", [(None, True), ("false", False)])
def test_a_cpu_run_trains_in_channels_last_unless_told_not_to(setting, want, tmp_path, fmnist_tiny):
    """NHWC is faster on the CPU as well (benchmarks/profile_step.py --options): the default there too."""
    seen = {"inputs": set()}

    class Layout(L.Callback):  # a 1-channel view is NCHW and NHWC at once: look where there are channels
        def on_train_start(self, trainer, pl_module):
            conv = [m for m in pl_module.backbone.modules() if isinstance(m, torch.nn.Conv2d)][1]
            self.handle = conv.register_forward_pre_hook(
                lambda mod, args: seen["inputs"].add(args[0].is_contiguous(memory_format=torch.channels_last)))

        def on_train_end(self, trainer, pl_module):
            self.handle.remove()
            seen["weights"] = {m.weight.is_contiguous(memory_format=torch.channels_last)
                               for m in pl_module.method.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1}

    extra = [f"backbone.channels_last={setting}"] if setting else []
    cfg = tiny_config("mocov2", tmp_path, "optim.max_steps=2", "trainer.knn_at_start=false", "trainer.knn_every=0",
                      *extra)
    res = pretrain(cfg, splits=fmnist_tiny, quiet=True, extra_callbacks=[Layout()])
    assert seen["inputs"] == {want}  # the feature maps inside the backbone
    assert seen["weights"] == {want}  # student and EMA teacher
    assert res["channels_last"] is want


@pytest.mark.parametrize("setting, want", [(None, True), ("false", False)])
def test_evaluation_on_the_cpu_uses_the_layout_the_run_trained_in(setting, want, tmp_path, fmnist_tiny):
    """relssl eval / embed / semisup extract features as the run trained (NHWC by default: 1.5-1.8x
    faster on a CPU), not NCHW whenever the device is not a GPU."""
    from relssl.evaluate.checkpoint import prepare
    from relssl.evaluate.embed import embed_split
    from relssl.evaluate.semisup import SemiSupConfig, fine_tune

    extra = [f"backbone.channels_last={setting}"] if setting else []
    cfg = tiny_config("simclr", tmp_path, "optim.max_steps=2", "trainer.knn_at_start=false", "trainer.knn_every=0", *extra)
    run_dir = pretrain(cfg, splits=fmnist_tiny, quiet=True)["run_dir"]
    setup = prepare(run_dir, splits=fmnist_tiny, device="cpu")
    seen = set()
    convs = [m for m in setup.method.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    # loaded in that layout (every protocol starts from it: the probe's augmented batches, embed's heads)
    assert {m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs} == {want}
    hooks = [m.register_forward_pre_hook(  # a 1-channel image is NCHW and NHWC at once: look where there are channels
        lambda mod, args: seen.add(args[0].is_contiguous(memory_format=torch.channels_last))) for m in convs]
    images = fmnist_tiny.test.images[:16]
    features = setup.features(images)
    embed_split(setup, "test", subsets={"test": 16})
    fine_tune(setup, SemiSupConfig(fraction=0.1, epochs=1, batch_size=16))
    for h in hooks:
        h.remove()
    assert seen == {want}  # the feature maps inside the backbone, in every protocol
    assert {m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs} == {want}
    assert setup.header("knn")["channels_last"] is want
    # a layout, not another computation: the same features up to float rounding
    other = prepare(run_dir, [f"backbone.channels_last={not want}".lower()], splits=fmnist_tiny, device="cpu")
    assert other.channels_last is not want
    assert torch.allclose(features, other.features(images), atol=1e-5)


def test_the_eval_layout_benchmark_compares_both_layouts(fmnist, capsys):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("relssl_bench_eval_layout", root / "benchmarks" / "eval_layout.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--images", "64", "--rounds", "1", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "NCHW" in out and "channels_last" in out and "64 images" in out
    diff = float(out.split("largest feature difference ")[1].split(";")[0].split()[0])
    assert diff < 1e-4  # a layout, not another computation


@pytest.mark.parametrize("method", ["simclr", "mocov2"])
def test_channels_last_is_a_layout_not_a_different_computation(method, tmp_path, fmnist_tiny, monkeypatch):
    def losses(channels_last, sub):
        monkeypatch.setattr(PretrainModule, "_channels_last", lambda self: channels_last)
        cfg = tiny_config(method, tmp_path / sub, "optim.epochs=1", "trainer.knn_at_start=false",
                          "trainer.knn_every=0", "trainer.diagnose_every=0", "optim.lr=0.001")
        res = pretrain(cfg, splits=fmnist_tiny, quiet=True)
        return torch.tensor([float(r["loss"]) for r in read_metrics(res["run_dir"]) if r.get("loss")])

    a, b = losses(False, "contiguous"), losses(True, "channels_last")
    assert len(a) == 4
    # the same first step up to float rounding of different kernels; later steps drift apart slowly
    # (measured: 2e-4 relative by step 3 at this small lr; a large lr amplifies rounding further)
    assert torch.allclose(a[0], b[0], rtol=1e-5), (a.tolist(), b.tolist())
    assert torch.allclose(a, b, rtol=2e-3), (a.tolist(), b.tolist())


def test_resume_under_bf16_channels_last_equals_uninterrupted(tmp_path, fmnist_tiny, force_channels_last):
    from relssl.engine.checkpoint import load_checkpoint_file

    from test_engine import _Crash

    extra = ["optim.epochs=3", "trainer.knn_every=0", "trainer.knn_at_start=false", "trainer.precision=bf16-mixed"]
    full = pretrain(tiny_config("mocov2", tmp_path / "a", *extra), splits=fmnist_tiny, quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(tiny_config("mocov2", tmp_path / "b", *extra), splits=fmnist_tiny, quiet=True,
                 extra_callbacks=[_Crash(2)])
    run_b = next((tmp_path / "b").iterdir())
    pretrain(None, splits=fmnist_tiny, resume=run_b, quiet=True)
    a = load_checkpoint_file(f"{full['run_dir']}/checkpoints/last.ckpt")["state_dict"]
    b = load_checkpoint_file(run_b / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:  # student, teacher, queue: identical after a resume in the GPU configuration
        assert torch.equal(a[k], b[k]), k
    conv = next(k for k in a if k.endswith("weight") and a[k].dim() == 4)
    assert a[conv].is_contiguous(memory_format=torch.channels_last)  # saved as trained

