import gzip
import struct

import numpy as np
import pytest
import torch

from relssl.data import EpochBatchSampler, ImageDataset, load_dataset, load_idx_dataset, read_idx
from relssl.data.datasets import FASHION_MNIST_INFO
from relssl.errors import DataError


def write_idx(path, array, gz=False):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_idx_dir(root, n_train=20, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", np.arange(n_train) % 10, gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", np.arange(n_test) % 10, gz)


def test_real_fashion_mnist(fmnist):
    assert fmnist.pretrain.images.shape == (60000, 1, 28, 28)
    assert fmnist.test.images.shape == (10000, 1, 28, 28)
    assert fmnist.pretrain.images.dtype == torch.uint8
    assert torch.bincount(fmnist.pretrain.labels).tolist() == [6000] * 10
    # the dataset statistics we normalise with are the real ones
    x = fmnist.pretrain.images.float() / 255
    assert abs(x.mean().item() - fmnist.info.mean[0]) < 1e-3
    assert abs(x.std().item() - fmnist.info.std[0]) < 1e-3


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    make_idx_dir(tmp_path, gz=gz)
    splits = load_idx_dataset(tmp_path, FASHION_MNIST_INFO)
    assert splits.pretrain.images.shape == (20, 1, 28, 28)
    assert splits.test.labels.tolist() == [i % 10 for i in range(10)]
    assert splits.bank is splits.pretrain


def test_idx_errors(tmp_path):
    with pytest.raises(DataError, match="IDX files not found"):
        load_dataset("fashion_mnist", root=str(tmp_path))
    make_idx_dir(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(p)
    p.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)
    with pytest.raises(DataError, match="unknown dataset 'cifar11'"):
        load_dataset("cifar11")


def test_image_dataset_checks_and_subset():
    with pytest.raises(DataError, match="empty"):
        ImageDataset(torch.zeros(0, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4))
    ds = ImageDataset(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2).contiguous(),
                      torch.arange(100) % 4)
    sub = ds.subset(20, seed=3)
    assert len(sub) == 20 and torch.bincount(sub.labels).tolist() == [5, 5, 5, 5]
    assert torch.equal(sub.images, ds.subset(20, seed=3).images)  # seeded


def test_epoch_sampler_order_and_ranks():
    s = EpochBatchSampler(10, 3, seed=1)
    assert len(s) == 3
    s.set_epoch(0)
    e0 = torch.cat(list(s))
    s.set_epoch(1)
    e1 = torch.cat(list(s))
    assert len(e0) == 9 and len(set(e0.tolist())) == 9 and not torch.equal(e0, e1)
    s.set_epoch(0)
    assert torch.equal(torch.cat(list(s)), e0)  # a pure function of (seed, epoch)
    # two ranks split every global batch of one process with the global batch size
    full = EpochBatchSampler(12, 4, seed=2)
    r0 = EpochBatchSampler(12, 2, seed=2, rank=0, world_size=2)
    r1 = EpochBatchSampler(12, 2, seed=2, rank=1, world_size=2)
    for b, a0, a1 in zip(full, r0, r1):
        assert torch.equal(b, torch.cat([a0, a1]))
    with pytest.raises(ValueError, match="larger than the dataset"):
        EpochBatchSampler(10, 11)
