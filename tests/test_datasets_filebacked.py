"""The file-backed path: FileImageDataset + DecodedBatchDataset through a DataLoader give the
same uint8 batches as the in-memory path."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataset_files import write_class_folder, write_stl10
from relssl.data import (
    ArraySource,
    DecodedBatchDataset,
    EpochBatchSampler,
    FileImageDataset,
    FileListSource,
    ImageDataset,
    load_dataset,
)
from relssl.errors import DataError


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    write_class_folder(root, classes=("a", "b", "c"), per_class=10, size=40, ext="jpg")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_equal_in_memory(jpeg_folder, workers):
    mem = load_dataset("folder", root=str(jpeg_folder), size=32)
    fb = load_dataset("folder", root=str(jpeg_folder), size=32, memory_limit=0)
    assert isinstance(mem.pretrain, ImageDataset) and not mem.pretrain.is_file_backed
    assert isinstance(fb.pretrain, FileImageDataset) and fb.pretrain.is_file_backed
    assert len(fb.pretrain) == len(mem.pretrain) == 24 and torch.equal(fb.pretrain.labels, mem.pretrain.labels)
    assert fb.info.mean == mem.info.mean and fb.info.std == mem.info.std
    sampler = EpochBatchSampler(len(fb.pretrain), 5, seed=3)
    sampler.set_epoch(1)
    loader = DataLoader(DecodedBatchDataset(fb.pretrain), sampler=sampler, batch_size=None, num_workers=workers)
    seen = []
    for images, idx in loader:
        assert images.dtype == torch.uint8 and images.shape == (5, 3, 32, 32)
        assert torch.equal(images, mem.pretrain.images[idx])
        seen.append(idx)
    assert torch.equal(torch.cat(seen), torch.cat(list(sampler)))  # batches in the sampler's order
    assert len(seen) == 4


def test_materialize_subset_take(jpeg_folder):
    mem = load_dataset("folder", root=str(jpeg_folder), size=24)
    fb = load_dataset("folder", root=str(jpeg_folder), size=24, memory_limit=0)
    m = fb.test.materialize()
    assert isinstance(m, ImageDataset) and torch.equal(m.images, mem.test.images)
    assert torch.equal(m.labels, mem.test.labels)
    a, b = fb.pretrain.subset(9, seed=4), mem.pretrain.subset(9, seed=4)
    assert isinstance(a, FileImageDataset) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.materialize(workers=1).images, b.images)
    assert torch.equal(fb.pretrain.take([5, 2]).read([1, 0]), mem.pretrain.images[[2, 5]])
    assert torch.equal(fb.pretrain.read([-1]), mem.pretrain.images[[-1]])
    with pytest.raises(IndexError):
        fb.pretrain.read([len(fb.pretrain)])
    assert fb.pretrain.nbytes == 24 * 3 * 24 * 24 and "24 images" in repr(fb.pretrain)
    # ImageDataset answers the same calls
    assert torch.equal(mem.pretrain.read(torch.tensor([3, 1])), mem.pretrain.images[[3, 1]])
    assert mem.pretrain.materialize() is mem.pretrain
    img, idx = DecodedBatchDataset(mem.pretrain)[torch.tensor([2, 0])]
    assert torch.equal(img, mem.pretrain.images[[2, 0]]) and idx.tolist() == [2, 0]


def test_memory_limit_threshold(jpeg_folder):
    n = 24 * 3 * 16 * 16
    assert not load_dataset("folder", root=str(jpeg_folder), size=16, memory_limit=n).pretrain.is_file_backed
    assert load_dataset("folder", root=str(jpeg_folder), size=16, memory_limit=n - 1).pretrain.is_file_backed


def test_memmap_sources_travel_without_their_data(tmp_path):
    write_stl10(tmp_path, n_train=4, n_test=2, n_unlabeled=30)
    fb = load_dataset("stl10", root=str(tmp_path), memory_limit=0)
    assert len(pickle.dumps(fb.pretrain)) < 10_000  # 34 images of 27 KB: the map is reopened, not copied
    back = pickle.loads(pickle.dumps(fb.pretrain))
    assert torch.equal(back.read([33, 2]), fb.pretrain.read([33, 2]))
    loader = DataLoader(DecodedBatchDataset(fb.pretrain), sampler=EpochBatchSampler(34, 8, seed=0),
                        batch_size=None, num_workers=2)
    mem = load_dataset("stl10", root=str(tmp_path))
    for images, idx in loader:
        assert torch.equal(images, mem.pretrain.images[idx])


def test_corrupt_file_in_a_worker(tmp_path):
    write_class_folder(tmp_path, classes=("a", "b"), per_class=4, size=16, ext="jpg")
    fb = load_dataset("folder", root=str(tmp_path), size=16, memory_limit=0, mean=(0.5,) * 3, std=(0.2,) * 3)
    bad = tmp_path / "a" / "a_2.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"cannot decode image {bad}"):
        fb.pretrain.materialize()
    loader = DataLoader(DecodedBatchDataset(fb.pretrain), sampler=EpochBatchSampler(len(fb.pretrain), 6, shuffle=False),
                        batch_size=None, num_workers=2)
    with pytest.raises(DataError, match=r"cannot decode image .*a_2.jpg"):
        list(loader)


def test_sources_and_checks(tmp_path):
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    with pytest.raises(DataError, match="same channel count"):
        FileImageDataset([ArraySource(x, layout="NHWC"), ArraySource(x[:1, :, :, 0], layout="NHW")], 4)
    ds = FileImageDataset([ArraySource(x, layout="NHWC")], 4, torch.tensor([0, 1]))
    assert torch.equal(ds.read([1]), torch.from_numpy(x[1:]).permute(0, 3, 1, 2))
    assert ds.read([0, 1]).shape == (2, 3, 4, 4) and ds.read(torch.tensor([1, 0]))[1].sum() == x[0].sum()
    with pytest.raises(DataError, match="empty"):
        FileImageDataset([FileListSource([], 3)], 8)
    with pytest.raises(DataError, match="2 images but 3 labels"):
        FileImageDataset([ArraySource(x, layout="NHWC")], 4, torch.tensor([0, 1, 2]))
