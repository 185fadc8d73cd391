"""STL-10 from binary files written byte by byte in the real (column-major) layout."""

import numpy as np
import pytest
import torch

from dataset_files import write_stl10
from relssl.data import FileImageDataset, ImageDataset, load_dataset, read_stl10_images
from relssl.errors import DataError


def test_stl10_splits_and_pixels(tmp_path):
    w = write_stl10(tmp_path)
    s = load_dataset("stl10", root=str(tmp_path))
    # pretrain = train + unlabeled, bank = train, test = test
    assert s.pretrain.images.shape == (11, 3, 96, 96) and s.pretrain.labels is None
    assert torch.equal(s.pretrain.images, torch.from_numpy(np.concatenate([w["train_x"], w["unlabeled_x"]])))
    assert torch.equal(s.bank.images, torch.from_numpy(w["train_x"]))
    assert torch.equal(s.test.images, torch.from_numpy(w["test_x"]))
    assert s.bank.labels.tolist() == w["train_y"].tolist() and s.test.labels.tolist() == w["test_y"].tolist()
    assert s.bank.labels.min() == 0 and s.bank.labels.dtype == torch.int64  # 1..10 on disk -> 0..9
    assert s.extra["pretrain_labels"].tolist() == w["train_y"].tolist() + [-1] * 5
    i = s.info
    assert (i.num_classes, i.channels, i.native_size, i.crop_size, i.maxpool) == (10, 3, 96, 64, True)
    assert i.mean == (0.4408, 0.4279, 0.3867) and i.std == (0.2682, 0.2610, 0.2686)
    assert (i.pretrain_split, i.bank_split, i.test_split) == ("train+unlabeled", "train", "test")
    assert i.classes[7] == "monkey"


def test_stl10_column_major_pixel(tmp_path):
    """Byte c*9216 + x*96 + y of an image is channel c, row y, column x."""
    write_stl10(tmp_path, n_train=2, n_test=2, n_unlabeled=1)
    p = tmp_path / "stl10_binary" / "test_X.bin"
    raw = np.zeros(2 * 27648, dtype=np.uint8)
    raw[27648 + 2 * 9216 + 70 * 96 + 3] = 200  # image 1, blue, column 70, row 3
    p.write_bytes(raw.tobytes())
    x = read_stl10_images(p)
    assert x.shape == (2, 3, 96, 96)
    assert x[1, 2, 3, 70] == 200 and int(x.sum()) == 200
    assert torch.equal(load_dataset("stl10", root=str(tmp_path)).test.images, x)


def test_stl10_train_only_and_resize(tmp_path):
    w = write_stl10(tmp_path, n_unlabeled=3)
    s = load_dataset("stl10", root=str(tmp_path / "stl10_binary"), unlabeled=False, size=48)
    assert s.pretrain is s.bank and s.pretrain.images.shape == (6, 3, 48, 48)
    assert s.info.native_size == 48 and s.info.pretrain_split == "train"
    assert s.pretrain.labels.tolist() == w["train_y"].tolist()


def test_stl10_file_backed_matches_memory(tmp_path):
    write_stl10(tmp_path)
    mem = load_dataset("stl10", root=str(tmp_path))
    fb = load_dataset("stl10", root=str(tmp_path), memory_limit=0)
    assert isinstance(fb.pretrain, FileImageDataset) and fb.pretrain.is_file_backed
    assert isinstance(mem.pretrain, ImageDataset) and not mem.pretrain.is_file_backed
    idx = torch.tensor([10, 0, 7, 5, 6])  # crosses train -> unlabeled
    assert torch.equal(fb.pretrain.read(idx), mem.pretrain.images[idx])
    assert torch.equal(fb.test.materialize().images, mem.test.images)
    assert fb.bank.labels.tolist() == mem.bank.labels.tolist()


def test_stl10_errors(tmp_path):
    with pytest.raises(DataError, match=r"stl10: stl10_binary/ \(train_X.bin.*not found in"):
        load_dataset("stl10", root=str(tmp_path))
    write_stl10(tmp_path, n_train=2, n_test=2, n_unlabeled=1)
    d = tmp_path / "stl10_binary"
    (d / "unlabeled_X.bin").unlink()
    with pytest.raises(DataError, match=r"unlabeled_X.bin not found; expected stl10_binary/"):
        load_dataset("stl10", root=str(tmp_path))
    (d / "unlabeled_X.bin").write_bytes(b"\0" * 27647)  # one byte short
    with pytest.raises(DataError, match=r"unlabeled_X.bin holds 27647 bytes, not a multiple of 27648"):
        load_dataset("stl10", root=str(tmp_path))
    (d / "unlabeled_X.bin").write_bytes(b"\0" * 27648)
    (d / "train_y.bin").write_bytes(bytes([1]))
    with pytest.raises(DataError, match=r"train_y.bin holds 1 labels for 2 images"):
        load_dataset("stl10", root=str(tmp_path))
    (d / "train_y.bin").write_bytes(bytes([0, 11]))
    with pytest.raises(DataError, match=r"train_y.bin holds labels 0..11; expected 1..10"):
        load_dataset("stl10", root=str(tmp_path))
    (d / "train_y.bin").write_bytes(bytes([4, 4]))
    with pytest.raises(DataError, match=r"single class"):
        load_dataset("stl10", root=str(tmp_path))
