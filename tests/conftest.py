import os

import pytest
import torch

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
