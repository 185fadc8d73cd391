"""CIFAR-10 / CIFAR-100 from pickle batches written in the real layout."""

import pickle

import numpy as np
import pytest
import torch

from dataset_files import cifar_rows, write_cifar10, write_cifar100
from relssl.data import load_dataset, read_cifar_pickle
from relssl.data.cifar import CIFAR10_INFO
from relssl.errors import DataError


@pytest.mark.parametrize("bytes_keys,protocol", [(True, 2), (False, 2), (False, 5)])
def test_cifar10_roundtrip(tmp_path, bytes_keys, protocol):
    w = write_cifar10(tmp_path, bytes_keys=bytes_keys, protocol=protocol)
    s = load_dataset("cifar10", root=str(tmp_path))
    assert s.pretrain.images.shape == (20, 3, 32, 32) and s.pretrain.images.dtype == torch.uint8
    assert s.test.images.shape == (6, 3, 32, 32)
    assert torch.equal(s.pretrain.images, torch.from_numpy(w["train_x"]))
    assert torch.equal(s.test.images, torch.from_numpy(w["test_x"]))
    assert s.pretrain.labels.dtype == torch.int64
    assert s.pretrain.labels.tolist() == w["train_y"].tolist() and s.test.labels.tolist() == w["test_y"].tolist()
    assert s.bank is s.pretrain  # bank = train
    assert s.info.classes[0] == "airplane" and s.info.classes[9] == "truck"
    assert (s.info.num_classes, s.info.channels, s.info.native_size, s.info.crop_size) == (10, 3, 32, 32)
    assert s.info.mean == (0.4914, 0.4822, 0.4465) and s.info.std == (0.2023, 0.1994, 0.2010)
    assert not s.info.maxpool and not s.pretrain.is_file_backed
    # root may also be the batches folder itself
    s2 = load_dataset("cifar10", root=str(tmp_path / "cifar-10-batches-py"))
    assert torch.equal(s2.test.images, s.test.images)


def test_cifar_channel_planar_layout(tmp_path):
    """Byte c*1024 + y*32 + x of a row is channel c, row y, column x."""
    w = write_cifar10(tmp_path, per_batch=2, n_test=2)
    d = tmp_path / "cifar-10-batches-py"
    raw = read_cifar_pickle(d / "test_batch")
    data = raw["data"].copy()
    data[:] = 0
    data[0, 1 * 1024 + 5 * 32 + 7] = 255  # green, row 5, column 7
    data[1, 2 * 1024 + 31 * 32 + 0] = 9  # blue, row 31, column 0
    raw["data"] = data
    pickle.dump(raw, open(d / "test_batch", "wb"), protocol=2)
    x = load_dataset("cifar10", root=str(tmp_path)).test.images
    assert x[0, 1, 5, 7] == 255 and int(x[0].sum()) == 255
    assert x[1, 2, 31, 0] == 9 and int(x[1].sum()) == 9
    assert np.array_equal(cifar_rows(w["train_x"]), w["train_x"].reshape(len(w["train_x"]), 3072))


def test_cifar100_fine_labels(tmp_path):
    w = write_cifar100(tmp_path)
    s = load_dataset("cifar100", root=str(tmp_path))
    assert s.pretrain.images.shape == (12, 3, 32, 32) and s.test.images.shape == (5, 3, 32, 32)
    assert torch.equal(s.pretrain.images, torch.from_numpy(w["train_x"]))
    assert s.pretrain.labels.tolist() == w["train_y"].tolist()
    assert s.test.labels.tolist() == w["test_y"].tolist()
    assert s.extra["coarse_labels"]["test"].tolist() == w["test_coarse"].tolist()
    assert s.info.num_classes == 100 and s.info.classes[3] == "fine3" and len(s.info.classes) == 100
    assert s.extra["coarse_classes"][0] == "coarse0"
    assert s.info.mean == (0.5071, 0.4867, 0.4408) and s.info.std == (0.2675, 0.2565, 0.2761)


def test_cifar_resize_option(tmp_path):
    write_cifar10(tmp_path, per_batch=2, n_test=2)
    s = load_dataset("cifar10", root=str(tmp_path), size=16)
    assert s.pretrain.images.shape == (10, 3, 16, 16)
    assert (s.info.native_size, s.info.crop_size) == (16, 16)


def test_cifar_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=r"cifar10: cifar-10-batches-py/ .* not found in") as err:
        load_dataset("cifar10", root=str(tmp_path))
    # the download goes to the cache, not to the data.root the message tells the user to leave out
    assert f"(downloads into {tmp_path / 'home' / '.cache' / 'relssl' / 'cifar10'})" in str(err.value)
    write_cifar10(tmp_path, per_batch=2, n_test=2)
    d = tmp_path / "cifar-10-batches-py"
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3 not found; expected a CIFAR"):
        load_dataset("cifar10", root=str(tmp_path))
    # truncated pickle
    raw = (d / "data_batch_1").read_bytes()
    (d / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"data_batch_3 is truncated"):
        load_dataset("cifar10", root=str(tmp_path))
    # wrong layout: data of the wrong shape
    pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, open(d / "data_batch_3", "wb"))
    with pytest.raises(DataError, match=r"data_batch_3: 'data' is uint8 array \(2, 100\); expected"):
        load_dataset("cifar10", root=str(tmp_path))
    # labels out of range / missing
    pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, open(d / "data_batch_3", "wb"))
    with pytest.raises(DataError, match=r"labels span 0..10, expected 0..9"):
        load_dataset("cifar10", root=str(tmp_path))
    pickle.dump({"data": np.zeros((2, 3072), np.uint8)}, open(d / "data_batch_3", "wb"))
    with pytest.raises(DataError, match=r"'labels' missing"):
        load_dataset("cifar10", root=str(tmp_path))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_pickle_refuses_other_objects(tmp_path, capsys):
    p = tmp_path / "evil"
    pickle.dump({"data": _Evil()}, open(p, "wb"))
    with pytest.raises(DataError, match=r"holds objects other than arrays and plain data \(refusing to load builtins.print\)"):
        read_cifar_pickle(p)
    assert "must never run" not in capsys.readouterr().out


def test_download_uses_torchvision_then_our_reader(tmp_path, monkeypatch):
    """With download allowed and no root, torchvision's download fills ~/.cache/relssl/<name>, then we read it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RELSSL_DATA", raising=False)
    calls = []

    def fake_download(name, target):
        calls.append((name, target))
        write_cifar10(target, per_batch=2, n_test=2)
        return True

    monkeypatch.setattr("relssl.data.core.torchvision_download", fake_download)
    with pytest.raises(DataError, match="data.download=true without data.root"):
        load_dataset("cifar10", download=False)
    s = load_dataset("cifar10", download=True)
    assert calls == [("cifar10", tmp_path / "home" / ".cache" / "relssl" / "cifar10")]
    assert s.pretrain.images.shape == (10, 3, 32, 32)
    load_dataset("cifar10", download=True)  # found in the cache now: no second download
    assert len(calls) == 1


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RELSSL_DATA", raising=False)
    monkeypatch.setattr("relssl.data.core.torchvision_download", lambda name, target: False)
    with pytest.raises(DataError, match="stl10: stl10_binary/"):
        load_dataset("stl10", download=True)


def test_info_defaults():
    assert CIFAR10_INFO.pretrain_split == "train" and CIFAR10_INFO.test_split == "test"
