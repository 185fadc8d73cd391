"""End to end: pretrain each method briefly on a few hundred real Fashion-MNIST images."""

import json
import math

import lightning as L
import pytest
import torch

from relssl.engine import pretrain
from relssl.engine.checkpoint import load_checkpoint_file
from relssl.errors import CheckpointError, ConfigError, TrainingError

from utils import SMALL_HEADS, read_metrics, tiny_config


def _column(rows, key):
    return torch.tensor([float(r[key]) for r in rows if r.get(key)])


def _check_soft_targets(rows, losses, per_epoch):
    # MSVQ / ReSSL: the teachers' soft labels sharpen (the embeddings spread instead of collapsing)
    entropy = _column(rows, "train/target_entropy")
    assert len(entropy) == len(losses) and entropy.max() <= math.log(256) + 1e-4
    by_epoch = entropy.view(4, -1).mean(dim=1)
    assert by_epoch[3] < by_epoch[1] - 0.05, by_epoch.tolist()


def _check_msf(rows, losses, per_epoch):
    by_epoch = losses.view(4, -1).mean(dim=1)
    assert by_epoch[3] < by_epoch[0] - 0.05, by_epoch.tolist()
    purity = _column(rows, "train/purity")
    assert len(purity) == len(losses) and ((purity > 0) & (purity <= 1)).all()


def _check_nn_purity(rows, losses, per_epoch):
    # Fashion-MNIST is balanced: a class-blind neighbour agrees about 10% of the time
    purity = _column(rows, "train/nn_purity")
    assert len(purity) == 4 * per_epoch and (purity[torch.isfinite(purity)] >= 0).all()
    assert purity[-per_epoch:].mean() > 0.12, purity.tolist()


METHOD_CHECKS = {"msvq": _check_soft_targets, "ressl": _check_soft_targets, "msf": _check_msf,
                 "nnclr": _check_nn_purity, "pnnclr": _check_nn_purity}


@pytest.mark.parametrize("method", sorted(SMALL_HEADS))
def test_pretrain_learns(method, tmp_path, fmnist_small):
    cfg = tiny_config(method, tmp_path, "optim.epochs=4", "optim.lr=0.05")
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    rows = read_metrics(res["run_dir"])
    per_epoch = 600 // 64
    losses = torch.tensor([float(r["loss"]) for r in rows if r.get("loss")])
    assert len(losses) == 4 * per_epoch and torch.isfinite(losses).all()
    # the loss falls: the last epoch's mean is below the higher of the first two epochs' means
    # (MoCo's loss first rises while its randomly initialised queue fills with real keys)
    by_epoch = losses.view(4, per_epoch).mean(dim=1)
    assert by_epoch[3] < by_epoch[:2].max() - 0.05, by_epoch.tolist()
    assert res["knn_last_top1"] > 30.0  # chance is 10%
    assert res["knn_init_top1"] is not None
    assert res["steps"] == 4 * per_epoch
    if method in METHOD_CHECKS:  # the method's own monitoring metrics, from the same run
        METHOD_CHECKS[method](rows, losses, per_epoch)
    # run directory layout
    run = res["run_dir"]
    for name in ("config.yaml", "metrics.csv", "log.txt", "results.json", "checkpoints/last.ckpt",
                 "checkpoints/best.ckpt"):
        assert (tmp_path / run.split("/")[-1] / name).exists(), name
    assert list((tmp_path / run.split("/")[-1] / "tb").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / run.split("/")[-1] / "results.json").read_text())["method"] == method


class _Crash(L.Callback):
    """Stops the run at the start of epoch ``at`` (after epoch at-1's checkpoint was written)."""

    def __init__(self, at):
        self.at = at

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("method", ["mocov2", "byol"])
def test_resume_equals_uninterrupted(method, tmp_path, fmnist_small):
    extra = ["optim.epochs=3", "trainer.knn_every=0", "trainer.knn_at_start=false"]
    full = pretrain(tiny_config(method, tmp_path / "a", *extra), splits=fmnist_small, quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(tiny_config(method, tmp_path / "b", *extra), splits=fmnist_small, quiet=True,
                 extra_callbacks=[_Crash(2)])
    run_b = next((tmp_path / "b").iterdir())
    mid = load_checkpoint_file(run_b / "checkpoints" / "last.ckpt")
    assert mid["epoch"] == 1  # the end of the second epoch (0-based)
    resumed = pretrain(None, splits=fmnist_small, resume=run_b, quiet=True)
    assert resumed["steps"] == full["steps"]
    a = load_checkpoint_file(f"{full['run_dir']}/checkpoints/last.ckpt")["state_dict"]
    b = load_checkpoint_file(run_b / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:  # student, teacher, queue and its pointer: all identical
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("accelerator", [
    "cpu",
    # on a GPU the guard reads the loss through a pinned non-blocking copy and an event, not .item()
    pytest.param("gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
])
def test_nan_loss_stops_with_step_named(accelerator, tmp_path, fmnist_small, monkeypatch):
    from relssl.methods.simclr import SimCLR

    orig = SimCLR.training_step

    def bad(self, views, info):
        out = orig(self, views, info)
        if info.step >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "training_step", bad)
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=2", "trainer.knn_at_start=false",
                      f"trainer.accelerator={accelerator}")
    with pytest.raises(TrainingError, match="non-finite loss at step 3 \\(simclr\\)"):
        pretrain(cfg, splits=fmnist_small, quiet=True)
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=1", "trainer.nan_policy=skip", "trainer.knn_every=0",
                      "trainer.knn_at_start=false", f"trainer.accelerator={accelerator}")
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    rows = read_metrics(res["run_dir"])
    assert sum(float(r["skipped_steps"]) for r in rows if r.get("skipped_steps")) == 6  # steps 3..8 of 9
    state = load_checkpoint_file(f"{res['run_dir']}/checkpoints/last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("policy", ["stop", "skip"])
@pytest.mark.parametrize("bad_step", [0, 8, 17])  # the first step, the last of epoch 1, the last of the run
def test_no_checkpoint_ever_holds_a_non_finite_tensor(policy, bad_step, tmp_path, fmnist_small, monkeypatch):
    from relssl.methods.simclr import SimCLR

    orig = SimCLR.training_step

    def bad(self, views, info):
        out = orig(self, views, info)
        if info.step == bad_step:  # 9 steps per epoch, 2 epochs
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "training_step", bad)
    cfg = tiny_config("simclr", tmp_path, "optim.epochs=2", "trainer.knn_at_start=false", "trainer.knn_every=0",
                      f"trainer.nan_policy={policy}", "name=run")
    if policy == "stop":
        with pytest.raises(TrainingError, match=f"non-finite loss at step {bad_step} \\(simclr\\); last good "
                                                f"checkpoint: (none yet|.*last.ckpt)"):
            pretrain(cfg, splits=fmnist_small, quiet=True)
        # the reason is in the run directory, not only on the screen
        assert f"non-finite loss at step {bad_step}" in (tmp_path / "run" / "log.txt").read_text()
        results = json.loads((tmp_path / "run" / "results.json").read_text())
        assert results["finished"] is False and f"non-finite loss at step {bad_step}" in results["stopped"]
    else:
        pretrain(cfg, splits=fmnist_small, quiet=True)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    if policy == "skip" or bad_step >= 9:
        assert ckpts  # epoch 1 ended before the bad step: its checkpoint exists
    for path in ckpts:
        state = load_checkpoint_file(path)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()), path
        for buf in state["optimizer_states"][0]["state"].values():
            assert torch.isfinite(buf["momentum_buffer"]).all(), path
        if policy == "stop":
            assert state["global_step"] <= bad_step  # saved before the bad step, never after it


def test_skipped_steps_do_not_move_the_teacher(tmp_path, fmnist_small, monkeypatch):
    """A skipped step changes nothing: no optimizer update and no EMA update of the teacher."""
    from relssl.methods.mocov2 import MoCoV2

    orig, ema_steps = MoCoV2.training_step, []
    orig_after = MoCoV2.after_optimizer_step

    def bad(self, views, info):
        out = orig(self, views, info)
        if info.step >= 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    def after(self, info):
        ema_steps.append(info.step)
        return orig_after(self, info)

    monkeypatch.setattr(MoCoV2, "training_step", bad)
    monkeypatch.setattr(MoCoV2, "after_optimizer_step", after)
    cfg = tiny_config("mocov2", tmp_path, "optim.epochs=1", "trainer.nan_policy=skip", "trainer.knn_every=0",
                      "trainer.knn_at_start=false")
    pretrain(cfg, splits=fmnist_small, quiet=True)
    assert ema_steps == [1, 2]  # after the two good optimizer steps only


def test_resume_errors(tmp_path, fmnist_small):
    with pytest.raises(ConfigError, match="no config.yaml"):
        pretrain(None, splits=fmnist_small, resume=tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match="no checkpoint at"):
        pretrain(None, splits=fmnist_small, resume=run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a relssl checkpoint"):
        pretrain(None, splits=fmnist_small, resume=run)


def test_batch_larger_than_data(tmp_path, fmnist_small):
    cfg = tiny_config("simclr", tmp_path, "optim.batch_size=1000")
    with pytest.raises(ConfigError, match="larger than the pretraining set"):
        pretrain(cfg, splits=fmnist_small, quiet=True)


def test_file_backed_pretraining_equals_in_memory(tmp_path, fmnist_small):
    """A split kept on disk (decoded by loader workers) trains exactly like the in-memory one."""
    from relssl.data import DatasetSplits
    from relssl.data.filebacked import from_tensor

    pre = fmnist_small.pretrain
    on_disk = from_tensor(pre.images, pre.labels, size=None, memory_limit=0)
    assert on_disk.is_file_backed
    splits = DatasetSplits(info=fmnist_small.info, pretrain=on_disk, bank=fmnist_small.bank, test=fmnist_small.test)
    extra = ["optim.epochs=1", "trainer.knn_every=0", "trainer.knn_at_start=false", "data.num_workers=2"]
    a = pretrain(tiny_config("simclr", tmp_path / "mem", *extra), splits=fmnist_small, quiet=True)
    b = pretrain(tiny_config("simclr", tmp_path / "disk", *extra), splits=splits, quiet=True)
    sa = load_checkpoint_file(f"{a['run_dir']}/checkpoints/last.ckpt")["state_dict"]
    sb = load_checkpoint_file(f"{b['run_dir']}/checkpoints/last.ckpt")["state_dict"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_method_recipe_defaults_under_user_overrides():
    from relssl.config import load_config
    from relssl.engine.views import view_recipes

    cfg = load_config(None, ["method.name=msvq"])
    names, recipes = view_recipes(cfg, 32)
    assert names == ["strong", "weak", "weak", "weak"]
    assert recipes[0].flip_p == 0.5 and all(r.flip_p == 0.9 for r in recipes[1:])  # MSVQ's official weak flip
    cfg = load_config(None, ["method.name=msvq", "augment.weak.flip_p=0.5"])
    assert all(r.flip_p == 0.5 for r in view_recipes(cfg, 32)[1])  # the user's value wins


def test_global_batch_and_lr_accounting(tmp_path, fmnist_small):
    """optim.global_batch_size fixes the batch over all processes (batch_size is derived from it,
    refused when the processes do not divide it), and results.json says the global batch, the batch
    per process, the processes and the lr after scaling."""
    from relssl.errors import ConfigError

    cfg = tiny_config("simclr", tmp_path, "optim.global_batch_size=64", "optim.batch_size=8", "optim.lr_scaling=linear",
                      "optim.lr=0.4", "optim.epochs=1", "data.subset=128", "trainer.knn_every=0",
                      "trainer.knn_at_start=false")
    assert cfg.optim.batch_size == 64  # derived: one process
    res = pretrain(cfg, splits=fmnist_small, quiet=True)
    assert res["batch"] == {"global": 64, "per_device": 64, "processes": 1} and res["steps"] == 2
    assert res["lr"] == {"base": 0.4, "scaling": "linear", "scaled": pytest.approx(0.4 * 64 / 256)}
    two = tiny_config("simclr", tmp_path, "optim.global_batch_size=64", "trainer.devices=2")
    assert two.optim.batch_size == 32
    with pytest.raises(ConfigError, match=r"global_batch_size=63 does not divide among 2 processes.*multiple of 2"):
        tiny_config("simclr", tmp_path, "optim.global_batch_size=63", "trainer.devices=2")


def test_results_name_the_cpu_model_and_its_vector_instructions(tmp_path):
    """results.json's ``device`` on a CPU: the model and widest vector unit, not just ``x86_64`` (two
    machines saying x86_64 here differed twofold in speed)."""
    from relssl.engine.rundir import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse2 avx avx2 avx512f\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse2 avx avx2 avx512f\n")
    name = cpu_name(info)
    assert name.startswith("Intel(R) Xeon(R) Platinum 8480+, ") and name.endswith(", AVX-512"), name
    info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2\n")
    assert cpu_name(info).startswith("AMD EPYC, ") and cpu_name(info).endswith(", AVX2")
    assert cpu_name(tmp_path / "missing")  # no /proc (another system): still a name, no error
