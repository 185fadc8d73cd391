"""MedMNIST .npz files with the real keys, shapes and dtypes."""

import numpy as np
import pytest
import torch

from dataset_files import write_medmnist
from relssl.data import FileImageDataset, load_dataset
from relssl.data.medmnist import npz_member
from relssl.errors import DataError


@pytest.mark.parametrize("compressed", [False, True])
def test_pathmnist_rgb(tmp_path, compressed):
    a = write_medmnist(tmp_path / "pathmnist.npz", rgb=True, num_classes=9, compressed=compressed)
    s = load_dataset("medmnist", root=str(tmp_path / "pathmnist.npz"))
    assert s.pretrain.images.shape == (10, 3, 28, 28) and s.pretrain.images.dtype == torch.uint8
    assert torch.equal(s.pretrain.images, torch.from_numpy(a["train_images"]).permute(0, 3, 1, 2))
    assert torch.equal(s.test.images, torch.from_numpy(a["test_images"]).permute(0, 3, 1, 2))
    assert s.bank is s.pretrain and len(s.extra["val"]) == 4
    assert s.pretrain.labels.tolist() == a["train_labels"][:, 0].tolist()
    assert s.test.labels.dtype == torch.int64
    i = s.info
    assert i.name == "medmnist:pathmnist" and i.num_classes == 9 and i.classes[0] == "adipose"
    assert (i.channels, i.native_size, i.crop_size, i.maxpool, i.multi_label) == (3, 28, 32, False, False)
    x = s.pretrain.images.double() / 255
    assert abs(x[:, 1].mean().item() - i.mean[1]) < 1e-3 and abs(x[:, 1].std().item() - i.std[1]) < 2e-3


def test_uncompressed_npz_is_memory_mapped(tmp_path):
    a = write_medmnist(tmp_path / "x.npz", size=64)
    m = npz_member(tmp_path / "x.npz", "train_images")
    assert isinstance(m, np.memmap) and np.array_equal(m, a["train_images"])
    c = write_medmnist(tmp_path / "c.npz", compressed=True)
    m = npz_member(tmp_path / "c.npz", "train_images")  # compressed members are read, not mapped
    assert not isinstance(m, np.memmap) and np.array_equal(m, c["train_images"])


def test_flavour_name_and_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RELSSL_DATA", raising=False)
    a = write_medmnist(tmp_path / "data" / "bloodmnist_64.npz", size=64, rgb=True, num_classes=8)
    write_medmnist(tmp_path / "data" / "octmnist.npz", num_classes=4)
    s = load_dataset("medmnist:bloodmnist_64", root=str(tmp_path / "data"))
    assert s.pretrain.images.shape == (10, 3, 64, 64) and s.info.crop_size == 64 and s.info.maxpool
    assert s.info.classes[0] == "basophil"
    # the medmnist package's default folder is searched without a root
    write_medmnist(tmp_path / "home" / ".medmnist" / "octmnist.npz", num_classes=4)
    g = load_dataset("medmnist:octmnist")
    assert g.pretrain.images.shape == (10, 1, 28, 28) and g.info.channels == 1 and g.info.num_classes == 4
    # a resize
    r = load_dataset("medmnist:bloodmnist_64", root=str(tmp_path / "data"), size=32)
    assert r.pretrain.images.shape == (10, 3, 32, 32) and r.info.native_size == 32
    # file-backed: same pixels, read in batches from the memory map
    fb = load_dataset("medmnist:bloodmnist_64", root=str(tmp_path / "data"), memory_limit=0)
    assert isinstance(fb.pretrain, FileImageDataset)
    assert torch.equal(fb.pretrain.read([3, 1]), torch.from_numpy(a["train_images"][[3, 1]]).permute(0, 3, 1, 2))
    with pytest.raises(DataError, match=r"holds 2 .npz files \(bloodmnist_64.npz, octmnist.npz\); pick one"):
        load_dataset("medmnist", root=str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"medmnist: dermamnist.npz not found in .*medmnist.com"):
        load_dataset("medmnist:dermamnist", root=str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"medmnist: which file\?"):
        load_dataset("medmnist")
    with pytest.raises(DataError, match=r"dataset 'cifar10' has no variants"):
        load_dataset("cifar10:small")


def test_multi_label_chestmnist(tmp_path, caplog):
    a = write_medmnist(tmp_path / "chestmnist.npz", multi_label=14)
    s = load_dataset("medmnist", root=str(tmp_path))  # the only .npz of the folder
    assert s.pretrain.images.shape == (10, 1, 28, 28)  # loads for pretraining
    assert s.pretrain.labels is None and s.bank.labels is None and s.test.labels is None
    assert s.info.multi_label and s.info.num_classes == 14 and s.info.classes[0] == "atelectasis"
    assert "multi-label (14 binary labels per image): kNN / linear evaluation of multi-label sets is unsupported" \
        in s.extra["labels_note"]
    assert "unsupported" in caplog.text
    assert torch.equal(s.extra["multi_labels"]["test"], torch.from_numpy(a["test_labels"].astype(np.int64)))
    # an unknown file with (N, L) labels is multi-label too
    write_medmnist(tmp_path / "other" / "mine.npz", multi_label=3)
    assert load_dataset("medmnist", root=str(tmp_path / "other" / "mine.npz")).info.multi_label


def test_medmnist_errors(tmp_path):
    with pytest.raises(DataError, match=r"medmnist: .*nope.npz not found"):
        load_dataset("medmnist", root=str(tmp_path / "nope.npz"))
    p = tmp_path / "bad.npz"
    np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 1), np.uint8),
             test_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"bad.npz has no 'test_labels' array .*expected a MedMNIST .npz"):
        load_dataset("medmnist", root=str(p))
    np.savez(p, train_images=np.zeros((2, 28, 28, 28), np.uint8), train_labels=np.zeros((2, 1), np.uint8),
             test_images=np.zeros((2, 28, 28, 28), np.uint8), test_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match=r"3-D MedMNIST volumes are not supported"):
        load_dataset("medmnist", root=str(p))
    np.savez(p, train_images=np.zeros((2, 28, 28), np.float32), train_labels=np.zeros((2, 1), np.uint8),
             test_images=np.zeros((2, 28, 28), np.uint8), test_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match=r"'train_images' is float32; expected uint8"):
        load_dataset("medmnist", root=str(p))
    np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((3, 1), np.uint8),
             test_images=np.zeros((2, 28, 28), np.uint8), test_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match=r"'train_labels' has shape \(3, 1\) .* for 2 images"):
        load_dataset("medmnist", root=str(p))
    np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 1), np.uint8),
             test_images=np.zeros((2, 28, 28), np.uint8), test_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match=r"single class"):
        load_dataset("medmnist", root=str(p))
    write_medmnist(p)
    p.write_bytes(p.read_bytes()[:1000])  # truncated
    with pytest.raises(DataError, match=r"bad.npz is truncated or not an .npz"):
        load_dataset("medmnist", root=str(p))
