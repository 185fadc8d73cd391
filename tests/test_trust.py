"""Trustworthy runs: SIGKILL + resume equals an uninterrupted run; bad input is one clear line and
writes or loses nothing; checkpoint writes are atomic."""

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from relssl.cli import main
from relssl.engine.checkpoint import atomic_torch_save, load_checkpoint_file
from relssl.errors import CheckpointError
from utils import cli, digest

FAST = ["backbone.name=convnet_tiny", "backbone.bn_splits=1", "data.subset=1600", "optim.batch_size=64",
        "optim.warmup_epochs=0", "optim.epochs=4", "method.proj_hidden=32", "method.proj_dim=16",
        "method.queue_size=200", "trainer.knn_every=0", "trainer.knn_at_start=false",
        "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.threads=1"]


def wait_for_checkpoints(ckpt: Path, count: int, proc, timeout=120):
    """Block until ``ckpt`` has been (re)written ``count`` more times; returns False if the run ended."""
    seen, last = 0, ckpt.stat().st_mtime_ns if ckpt.exists() else None
    t0 = time.time()
    while seen < count:
        if proc.poll() is not None or time.time() - t0 > timeout:
            return False
        m = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        if m is not None and m != last:
            seen, last = seen + 1, m
        time.sleep(0.01)
    return True


def test_sigkill_anywhere_then_resume_equals_uninterrupted(tmp_path):
    ref = cli("pretrain", "fashion_mnist/mocov2", *FAST, f"output_dir={tmp_path}", "name=ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = cli("pretrain", "fashion_mnist/mocov2", *FAST, f"output_dir={tmp_path}", "name=run")
    # kill point 1: mid-epoch 2, shortly after the first checkpoint was written
    assert wait_for_checkpoints(ckpt, 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # kill point 2: the resumed run, right as its next checkpoint lands (possibly mid-write)
    proc = cli("pretrain", "--resume", str(run))
    wait_for_checkpoints(ckpt, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    load_checkpoint_file(ckpt)  # never half-written
    # then run to the end
    proc = cli("pretrain", "--resume", str(run))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    a = load_checkpoint_file(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    b = load_checkpoint_file(ckpt)
    assert a["global_step"] == b["global_step"] == 4 * (1600 // 64)
    for k in a["state_dict"]:  # student, EMA teacher, queue, its pointer and bookkeeping
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match="No space left on device; free disk space"):
        atomic_torch_save({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before and not (tmp_path / "last.ckpt.tmp").exists()


def test_unwritable_directory_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        atomic_torch_save({"state_dict": {}}, blocker / "sub" / "last.ckpt")


# ------------------------------------------------------------------------- bad input, table-driven


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, fmnist_small):
    """A directory with a finished tiny run, a corrupt checkpoint, bad data and bad config files."""
    root = tmp_path_factory.mktemp("bad")
    from relssl.engine import pretrain
    from utils import tiny_config

    pretrain(tiny_config("simclr", root / "runs", "optim.epochs=1", "name=good"), splits=fmnist_small, quiet=True)
    corrupt = root / "runs" / "corrupt"
    (corrupt / "checkpoints").mkdir(parents=True)
    (corrupt / "config.yaml").write_text((root / "runs" / "good" / "config.yaml").read_text())
    good = (root / "runs" / "good" / "checkpoints" / "last.ckpt").read_bytes()
    (corrupt / "checkpoints" / "last.ckpt").write_bytes(good[: len(good) // 2])  # truncated
    (root / "noconfig").mkdir()
    (root / "garbage.ckpt").write_bytes(b"\x00garbage")
    (root / "bad.yaml").write_text("optim: [1, 2\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "nomethod.yaml").write_text("method: {temperature: 0.1}\n")
    (root / "empty.yaml").write_text("# nothing here\n")
    (root / "dup.yaml").write_text("method: {name: simclr}\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    from dataset_files import write_class_folder

    write_class_folder(root / "rgb", classes=("a", "b"), per_class=4, size=8)  # 3-channel images
    idx = root / "idx_trunc"
    idx.mkdir()
    src = Path("/usr/share/datasets/fashion-mnist")
    import gzip

    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        raw = gzip.open(src / (name + ".gz")).read()
        (idx / name).write_bytes(raw[: len(raw) - 1000] if name.startswith("train-images") else raw)
    junk = root / "idx_junk"
    junk.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (junk / name).write_bytes(b"PK\x03\x04 not idx")
    (root / "afile").write_text("x")
    return root


R = "fashion_mnist/simclr"
BAD = [
    # config: keys, types, ranges
    (["pretrain", R, "optim.lrr=0.1"], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    (["pretrain", R, "optimizer.lr=0.1"], "unknown config key 'optimizer'"),
    (["pretrain", R, "optim.lr=-1"], "optim.lr must be > 0"),
    (["pretrain", R, "optim.lr=abc"], "optim.lr must be a number"),
    (["pretrain", R, "optim.momentum=1.0"], "optim.momentum must be in [0, 1)"),
    (["pretrain", R, "optim.batch_size=1"], "optim.batch_size must be >= 2"),
    (["pretrain", R, "optim.epochs=0"], "optim.epochs must be >= 1"),
    (["pretrain", R, "optim.epochs=2.5"], "optim.epochs must be an integer"),
    (["pretrain", R, "optim.warmup_epochs=-1"], "optim.warmup_epochs must be in [0, epochs=200)"),
    (["pretrain", R, "optim.name=adam"], "optim.name must be one of sgd, lars"),
    (["pretrain", R, "optim.lr_scaling=cube"], "optim.lr_scaling must be one of none, linear, sqrt"),
    (["pretrain", R, "optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0"),
    (["pretrain", R, "method.temperature=0"], "method.temperature must be > 0"),
    (["pretrain", R, "method.temperature=-0.5"], "method.temperature must be > 0"),
    (["pretrain", "fashion_mnist/mocov2", "method.momentum=1.5"], "method.momentum must be in [0, 1]"),
    (["pretrain", "fashion_mnist/mocov2", "method.momentum=-0.1"], "method.momentum must be in [0, 1]"),
    (["pretrain", "fashion_mnist/mocov2", "method.queue_size=0"], "method.queue_size must be > 0"),
    (["pretrain", R, "method.name=foo"], "unknown method 'foo'"),
    (["pretrain", "fashion_mnist/mocov2", "method.queue_sz=5"], "unknown config key 'method.queue_sz'"),
    (["pretrain", R, "trainer.knn_t=0"], "trainer.knn_t (temperature) must be > 0"),
    (["pretrain", R, "trainer.knn_k=0"], "trainer.knn_k must be >= 1"),
    (["pretrain", R, "trainer.precision=fp8"], "trainer.precision must be one of"),
    (["pretrain", R, "trainer.nan_policy=ignore"], "trainer.nan_policy must be one of stop, skip"),
    (["pretrain", R, "trainer.accelerator=tpu"], "trainer.accelerator must be one of auto, cpu, gpu"),
    (["pretrain", R, "trainer.devices=0"], "trainer.devices and trainer.num_nodes must be >= 1"),
    (["pretrain", R, "backbone.name=resnet9"], "backbone.name: unknown backbone 'resnet9'; built-in: resnet18"),
    (["pretrain", R, "backbone.bn_splits=0"], "backbone.bn_splits must be >= 1"),
    (["pretrain", R, "backbone.cifar_stem=maybe"], "backbone.cifar_stem must be true or false"),
    (["pretrain", R, "data.subset=0"], "data.subset must be a positive integer or null"),
    (["pretrain", R, "seed=abc"], "seed must be an integer"),
    (["pretrain", R, "augment.simclr.flip_p=2"], "augment.simclr"),
    (["pretrain", R, "augment.simclr.blur_pp=1"], "augment.simclr"),
    (["pretrain", R, "plugins=[ascl]"], "plugin ascl does not fit method simclr"),
    (["pretrain", R, "plugins=[foo]"], "unknown plugin 'foo'"),
    (["pretrain", R, "lr0.1"], "must look like key=value"),
    (["pretrain", "{root}/bad.yaml"], "is not valid YAML"),
    (["pretrain", "{root}/list.yaml"], "must hold a mapping"),
    (["pretrain", "{root}/nomethod.yaml"], "method.name is missing"),
    (["pretrain", "nope/none"], "no config file 'nope/none'"),
    (["pretrain"], "pretrain needs a config"),
    # config that only fails against the data / the method
    (["pretrain", R, "views=[simclr]"], "views must name 2 recipes for simclr"),
    (["pretrain", "fashion_mnist/msf", "method.queue_size=100"], "must be >= the global batch (256) for msf"),
    (["pretrain", "fashion_mnist/msf", "method.topk=10", "method.queue_size=5"], "method.topk (10) must be <= method.queue_size (5)"),
    (["pretrain", "fashion_mnist/pnnclr", "method.topk=20000"], "method.topk must be <= method.queue_size"),
    (["pretrain", R, "views=[strongest, simclr]"], "views:"),
    (["pretrain", R, "optim.batch_size=100000"], "larger than the pretraining set"),
    (["pretrain", R, "output_dir={root}/afile/sub"], "cannot create run directory"),
    # data
    (["pretrain", R, "data.dataset=cifar11"], "unknown dataset 'cifar11'"),
    (["pretrain", R, "data.root={root}/nowhere"], "IDX files not found"),
    (["pretrain", R, "data.root={root}/idx_trunc"], "is truncated or corrupt"),
    (["pretrain", R, "data.root={root}/idx_junk"], "is not an IDX file"),
    # checkpoints and resume
    (["pretrain", "--resume", "{root}/noconfig"], "no config.yaml"),
    (["pretrain", "--resume", "{root}/runs/corrupt"], "is truncated, corrupt or not a relssl checkpoint"),
    (["pretrain", "--resume", "{root}/runs/good", "optim.lr=1"], "only trainer.* settings may change, got optim.lr=1"),
    (["pretrain", "--resume", "{root}/runs/good", "fashion_mnist/simclr"], "pass no recipe with it"),
    (["eval", "knn", "{root}/nowhere"], "does not exist"),
    (["eval", "knn", "{root}/garbage.ckpt"], "is truncated, corrupt or not a relssl checkpoint"),
    (["eval", "knn", "{root}/runs/corrupt"], "is truncated, corrupt or not a relssl checkpoint"),
    (["eval", "knn", "{root}/noconfig"], "holds no checkpoints/last.ckpt"),
    (["eval", "knn", "{root}/runs/good", "optim.lr=1"], "only data.* keys"),
    # second round (issue #20): ranges, YAML rules, values checked against the data
    (["pretrain", R, "seed=-1"], "seed must be >= 0"),
    (["pretrain", R, "trainer.threads=0"], "trainer.threads must be >= 1"),
    (["pretrain", R, "trainer.threads=-2"], "trainer.threads must be >= 1"),
    (["pretrain", R, "trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be >= 1"),
    (["pretrain", R, "trainer.log_every_n_steps=-5"], "trainer.log_every_n_steps must be >= 1"),
    (["pretrain", R, "trainer.knn_every=-1"], "trainer.knn_every must be >= 0"),
    (["pretrain", R, "trainer.checkpoint_every=0"], "trainer.checkpoint_every must be >= 1"),
    (["pretrain", R, "trainer.diagnose_every=-1"], "trainer.diagnose_every must be >= 0"),
    (["pretrain", R, "trainer.monitor=best"], "trainer.monitor must be one of"),
    (["pretrain", R, "trainer.num_nodes=0"], "trainer.devices and trainer.num_nodes must be >= 1"),
    (["pretrain", R, "data.bank_subset=-5"], "data.bank_subset must be a positive integer or null"),
    (["pretrain", R, "data.crop_size=10000"], "data.crop_size=10000 is more than 8x the 28-px images"),
    (["pretrain", R, "data.eval_size=5000"], "data.eval_size=5000 is more than 8x the 28-px images"),
    (["pretrain", R, "data.bank_subset=100", "trainer.knn_k=200"], "trainer.knn_k=200 is larger than the kNN bank (100 images)"),
    (["pretrain", R, "optim.weight_decay=-5e-4"], "optim.weight_decay must be >= 0"),
    (["pretrain", R, "optim.lr=1e-3x"], "optim.lr must be a number"),
    (["pretrain", R, "method.proj_dim=1e2"], "method.proj_dim must be an integer"),
    (["pretrain", R, "plugins=[bsim,bsim]"], "plugins lists bsim more than once"),
    (["pretrain", "{root}/empty.yaml"], "is empty; start from a packaged recipe"),
    (["pretrain", "{root}/dup.yaml"], "key 'lr' is given twice in one mapping (line 4)"),
    (["export", "{root}/runs/good", "-o", "{root}/afile/sub/b.safetensors"], "cannot write"),
    (["eval", "knn", "{root}/runs/good", "data.dataset=folder", "data.root={root}/rgb"],
     "was trained on 1-channel images but the data to evaluate has 3; evaluate on 1-channel data, or for an image "
     "folder set data.options.channels=1"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[:1] + a[-1:])[:60] for a, _ in BAD])
def test_bad_input(args, message, sandbox, capsys, monkeypatch):
    monkeypatch.chdir(sandbox)  # relative default output_dir 'runs' would land here: nothing may appear
    before = digest(sandbox)
    args = [a.replace("{root}", str(sandbox)) for a in args]
    if args[0] == "pretrain" and "--resume" not in args and len(args) > 1:
        args = args + [f"output_dir={sandbox}/runs"] if not any(a.startswith("output_dir=") for a in args) else args
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("relssl: error: ") and "\n" not in err, err
    assert message in err, err
    assert digest(sandbox) == before  # nothing written, nothing lost


def test_bad_input_table_is_large():
    assert len(BAD) >= 60


def test_scientific_notation_is_a_number_everywhere():
    from relssl.config import resolve_recipe
    from relssl.config import load_config

    cfg = load_config(resolve_recipe(R), ["optim.lr=1e-3", "optim.weight_decay=5e-4", "method.temperature=2E-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.method["temperature"]) == (0.001, 0.0005, 0.2)


# input refused by the config, a path or the data alone: refused before Lightning and torchvision load
# (seconds of imports on a small CPU), so a typo costs the user no more than importing torch
EARLY = [["pretrain", R, "optim.lrr=0.1"], ["pretrain", R, "optim.lr=-1"], ["pretrain", R, "backbone.name=resnet9"],
         ["pretrain", R, "plugins=[foo]"], ["pretrain", "nope/none"], ["pretrain", "--resume", "{root}/nowhere"],
         ["pretrain", R, "data.root={root}/nowhere"], ["pretrain", R, "data.dataset=cifar10", "data.root={root}"],
         ["eval", "knn", "{root}/nowhere"], ["eval", "knn", "{root}", "--k", "0"], ["eval", "linear", "{root}"],
         ["export", "{root}/nowhere", "-o", "{root}/x.pt"], ["demo", "--method", "nosuch"]]


def test_bad_config_path_or_data_is_refused_before_lightning_loads(tmp_path):
    script = ("import json, sys\nfrom relssl.cli import main\n"
              "rcs = [main(a) for a in json.loads(sys.argv[1])]\n"
              "print(json.dumps({'rcs': rcs, 'loaded': sorted(m for m in ('lightning', 'torchvision', 'torchmetrics') "
              "if m in sys.modules)}))")
    cases = [[a.replace("{root}", str(tmp_path)) for a in case] for case in EARLY]
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("relssl: error: ")]
    assert out["rcs"] == [2] * len(EARLY) and len(errors) == len(EARLY), proc.stderr[-2000:]
    assert out["loaded"] == [], f"imported before refusing: {out['loaded']}"
    assert list(tmp_path.iterdir()) == []


INSTALLED = shutil.which("relssl", path=str(Path(sys.executable).parent)) or shutil.which("relssl")
REAL = BAD[::3]  # every third case, as a user meets it: the installed command in a process of its own


@pytest.mark.skipif(INSTALLED is None, reason="the relssl command is not installed (pip install -e .)")
def test_bad_input_from_the_installed_command(sandbox):
    """Each case through the real ``relssl`` executable: exit status 2, one line on stderr, nothing on
    stdout but what the command prints before failing, and the sandbox unchanged byte for byte."""
    assert len(REAL) >= 20
    before = digest(sandbox)

    def run(case):
        args, message = case
        args = [a.replace("{root}", str(sandbox)) for a in args]
        if args[0] == "pretrain" and "--resume" not in args and len(args) > 1:
            args = args + [f"output_dir={sandbox}/runs"] if not any(a.startswith("output_dir=") for a in args) else args
        proc = subprocess.run([INSTALLED, *args], capture_output=True, text=True, cwd=sandbox, timeout=300)
        return case, proc

    with ThreadPoolExecutor(max_workers=2) as pool:
        for (args, message), proc in pool.map(run, REAL):
            err = proc.stderr.strip()
            assert proc.returncode == 2, (args, proc.returncode, err[-500:])
            assert err.startswith("relssl: error: ") and "\n" not in err, (args, err[-2000:])
            assert message in err, (args, err)
    assert digest(sandbox) == before


def test_checkpoint_io_refuses_non_finite_weights(tmp_path):
    """The last line of defence: the trainer's checkpoint I/O never writes a non-finite weight."""
    from relssl.engine.checkpoint import AtomicCheckpointIO, non_finite_tensors
    from relssl.errors import TrainingError

    good = {"a": torch.ones(3), "step": torch.tensor(4), "b": torch.zeros(2, 2)}
    assert non_finite_tensors(good) == []
    bad = {**good, "b": torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), "c": torch.tensor([float("inf")])}
    assert non_finite_tensors(bad) == ["b", "c"]
    path = tmp_path / "last.ckpt"
    with pytest.raises(TrainingError, match=r"refusing to write checkpoint .*: 2 non-finite tensors \(e.g. b\)"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": bad}, path)
    assert not path.exists() and not list(tmp_path.iterdir())
    AtomicCheckpointIO().save_checkpoint({"state_dict": good}, path)
    assert load_checkpoint_file(path)["state_dict"].keys() == good.keys()
