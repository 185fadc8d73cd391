import os
import subprocess

import pytest
import torch

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # several pytest workers (make test: -n auto): one core each. Intra-op threads of two workers on
    # 2 cores would fight over them; the environment variable carries the same setting into the
    # processes the tests start, so a run in a subprocess and its reference in here use one thread
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (make test installs it). Fails loudly if missing: the suite needs it."""
    from relssl.data import load_dataset

    return load_dataset("fashion_mnist")


@pytest.fixture(scope="session")
def fmnist_small(fmnist):
    """A few hundred real images: 600 to pretrain on (class-balanced), 300 for the kNN bank, 300 to test."""
    from relssl.data import DatasetSplits

    pre = fmnist.pretrain.subset(600, seed=0)
    return DatasetSplits(info=fmnist.info, pretrain=pre, bank=fmnist.bank.subset(600, seed=1),
                         test=fmnist.test.subset(300, seed=2))


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs (needs root and mount rights: skipped where the machine refuses)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); the full-disk test needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
