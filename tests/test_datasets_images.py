"""Tiny-ImageNet-200 and image folders, from JPEG / PNG files written with Pillow."""

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_files import jpeg_pixels, save_image, write_class_folder, write_tiny_imagenet
from relssl.data import decode_image, load_dataset
from relssl.errors import DataError


# ------------------------------------------------------------------------------- Tiny-ImageNet
def test_tiny_imagenet(tmp_path):
    w = write_tiny_imagenet(tmp_path)
    s = load_dataset("tiny_imagenet", root=str(tmp_path))
    assert s.pretrain.images.shape == (12, 3, 64, 64) and s.pretrain.images.dtype == torch.uint8
    assert s.test.images.shape == (6, 3, 64, 64)
    assert s.bank is s.pretrain
    assert s.pretrain.labels.tolist() == [k for _, k in w["train"]]  # sorted wnids
    assert s.test.labels.tolist() == [k for _, k in w["val"]]
    for i, (p, _) in enumerate(w["train"]):
        assert torch.equal(s.pretrain.images[i], torch.from_numpy(jpeg_pixels(p)))
    for i, (p, _) in enumerate(w["val"]):
        assert torch.equal(s.test.images[i], torch.from_numpy(jpeg_pixels(p)))
    # the grayscale JPEG came back as RGB with three equal channels
    g = s.pretrain.images[0]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    i = s.info
    assert (i.num_classes, i.channels, i.native_size, i.crop_size, i.maxpool) == (3, 3, 64, 64, True)
    assert i.mean == (0.4802, 0.4481, 0.3975) and i.std == (0.2302, 0.2265, 0.2262)
    assert i.test_split == "val"
    assert i.classes == ("name of n01443537", "name of n01629819", "name of n01641577")
    assert s.extra["wnids"] == ("n01443537", "n01629819", "n01641577")


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DataError, match=r"tiny_imagenet: tiny-imagenet-200/ .* not found in .*tiny-imagenet-200.zip"):
        load_dataset("tiny_imagenet", root=str(tmp_path))
    w = write_tiny_imagenet(tmp_path, per_class=2, n_val=3)
    d = w["dir"]
    ann = d / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_99.JPEG\tn01443537\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_99.JPEG \(named in .*val_annotations.txt line 4\) not found"):
        load_dataset("tiny_imagenet", root=str(tmp_path))
    ann.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"line 1 .* does not name an image and a wnid"):
        load_dataset("tiny_imagenet", root=str(tmp_path))
    ann.unlink()
    with pytest.raises(DataError, match=r"val_annotations.txt not found; expected tiny-imagenet-200/"):
        load_dataset("tiny_imagenet", root=str(tmp_path))


def test_tiny_imagenet_corrupt_jpeg(tmp_path):
    w = write_tiny_imagenet(tmp_path, per_class=2, n_val=3)
    p = w["train"][3][0]
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 3])  # truncated JPEG
    with pytest.raises(DataError, match=rf"cannot decode image {p}: (?i:.*truncated)"):
        load_dataset("tiny_imagenet", root=str(tmp_path))


# ------------------------------------------------------------------------------- folders
def test_class_folder_holdout_and_exact_pixels(tmp_path):
    w = write_class_folder(tmp_path, per_class=5, size=16)
    s = load_dataset("folder", root=str(tmp_path), size=16)
    i = s.info
    assert i.classes == ("cat", "dog", "emu") and i.num_classes == 3
    assert (i.channels, i.native_size, i.crop_size, i.maxpool) == (3, 16, 16, False)
    # 20% of each class held out: 1 of 5
    assert len(s.pretrain) == 12 and len(s.test) == 3 and s.bank is s.pretrain
    assert torch.bincount(s.test.labels).tolist() == [1, 1, 1]
    assert torch.bincount(s.pretrain.labels).tolist() == [4, 4, 4]
    # every image comes back exactly (PNG), under its class label
    every = {tuple(x.reshape(-1).tolist()[:32]): (k, x) for k, c in enumerate(w) for _, x in w[c]}
    for ds in (s.pretrain, s.test):
        for img, lab in zip(ds.images, ds.labels):
            k, x = every[tuple(img.reshape(-1).tolist()[:32])]
            assert k == int(lab) and torch.equal(img, torch.from_numpy(x))
    # the split is seeded: the same again
    assert torch.equal(load_dataset("folder", root=str(tmp_path), size=16).test.images, s.test.images)
    # mean / std measured on the pretraining images
    x = s.pretrain.images.double() / 255
    assert abs(x[:, 0].mean().item() - i.mean[0]) < 1e-3 and abs(x[:, 2].std().item() - i.std[2]) < 2e-3


def test_train_val_folders_default_size(tmp_path):
    write_class_folder(tmp_path / "train", classes=("a", "b"), per_class=3, size=64, ext="jpg")
    write_class_folder(tmp_path / "val", classes=("b",), per_class=2, size=64, ext="jpg", seed=9)
    s = load_dataset("folder", root=str(tmp_path))
    assert s.pretrain.images.shape == (6, 3, 64, 64) and s.test.images.shape == (2, 3, 64, 64)
    assert s.test.labels.tolist() == [1, 1]  # 'b' is class 1 of train
    assert (s.info.test_split, s.info.maxpool) == ("val", True)
    write_class_folder(tmp_path / "val", classes=("zebra",), per_class=1, size=8)
    with pytest.raises(DataError, match=r"val/zebra is not a class of the training folder"):
        load_dataset("folder", root=str(tmp_path))


def test_resize_crops_the_centre(tmp_path):
    """An 80x40 image: the centre 40x40 is kept; left half red, right half blue."""
    x = np.zeros((3, 40, 80), np.uint8)
    x[0, :, :40] = 255
    x[2, :, 40:] = 255
    for c in ("a", "b"):
        save_image(tmp_path / c / "wide.png", x)
        save_image(tmp_path / c / "wide2.png", x)
    s = load_dataset("folder", root=str(tmp_path), size=20, test_fraction=0.5)
    img = s.pretrain.images[0]
    assert img.shape == (3, 20, 20)
    assert (img[0, :, :9] == 255).all() and (img[2, :, :9] == 0).all()
    assert (img[2, :, 11:] == 255).all() and (img[0, :, 11:] == 0).all()


def test_grayscale_and_16bit(tmp_path):
    for c, v in (("a", 100), ("b", 200)):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), v * 257, np.uint16)).save(tmp_path / c / f"{i}.png")  # 16-bit PNG
    s = load_dataset("folder", root=str(tmp_path), size=8, test_fraction=0.5)
    assert s.info.channels == 1 and s.pretrain.images.shape == (2, 1, 8, 8)
    assert sorted(int(img.unique()) for img in s.pretrain.images) == [100, 200]  # 16-bit scaled, not clipped
    s3 = load_dataset("folder", root=str(tmp_path), size=8, test_fraction=0.5, channels=3)
    assert s3.pretrain.images.shape == (2, 3, 8, 8)


def test_unlabeled_folder(tmp_path):
    g = np.random.default_rng(0)
    save_image(tmp_path / "top.png", g.integers(0, 256, (3, 32, 32), dtype=np.uint8))
    save_image(tmp_path / "2021" / "01" / "deep.jpg", g.integers(0, 256, (3, 48, 40), dtype=np.uint8), quality=90)
    save_image(tmp_path / ".hidden" / "skip.png", g.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    s = load_dataset("folder", root=str(tmp_path), size=32)
    assert s.pretrain.images.shape == (2, 3, 32, 32) and s.pretrain.labels is None
    assert s.bank.labels is None and s.test.labels is None and not s.labelled
    assert "label-free" in s.extra["labels_note"] and s.info.num_classes == 0
    # unlabeled_folder takes everything, class-like folders included
    (tmp_path / "top.png").unlink()
    save_image(tmp_path / "b" / "x.png", g.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    u = load_dataset("unlabeled_folder", root=str(tmp_path), size=32)
    assert len(u.pretrain) == 2 and u.pretrain.labels is None and u.info.name == "unlabeled_folder"


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"folder: no folder given; set data.root=DIR"):
        load_dataset("folder")
    with pytest.raises(DataError, match=r"is not a directory"):
        load_dataset("folder", root=str(tmp_path / "nope"))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"folder: no image files under"):
        load_dataset("folder", root=str(tmp_path))
    with pytest.raises(DataError, match=r"no image files under"):
        load_dataset("unlabeled_folder", root=str(tmp_path))
    write_class_folder(tmp_path, classes=("only",), per_class=3, size=8)
    with pytest.raises(DataError, match=r"holds no images"):  # the empty class folder is named
        load_dataset("folder", root=str(tmp_path))
    (tmp_path / "empty_class").rmdir()
    with pytest.raises(DataError, match=r"single class folder \('only'\).*unlabeled_folder"):
        load_dataset("folder", root=str(tmp_path))
    assert len(load_dataset("unlabeled_folder", root=str(tmp_path), size=8).pretrain) == 3
    write_class_folder(tmp_path, classes=("other",), per_class=3, size=8, ext="jpg")
    bad = tmp_path / "other" / "other_1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=rf"cannot decode image {bad}"):
        load_dataset("folder", root=str(tmp_path), size=8)
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=rf"cannot decode image {bad}"):
        load_dataset("folder", root=str(tmp_path), size=8)
    with pytest.raises(DataError, match=r"unknown option 'colour'; this dataset takes"):
        load_dataset("folder", root=str(tmp_path), colour=True)


def test_decode_image_large_jpeg_draft(tmp_path):
    """A large JPEG is decoded at a reduced scale first; the result is still close to a full decode."""
    yy, xx = np.mgrid[0:512, 0:512]
    x = np.stack([xx // 2, yy // 2, (xx + yy) // 4]).astype(np.uint8)
    save_image(tmp_path / "big.jpg", x, quality=95)
    small = decode_image(tmp_path / "big.jpg", 3, 32).astype(float)
    ref = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert small.shape == (3, 32, 32) and np.abs(small - ref).mean() < 3


def test_imagenet_style_folder(tmp_path):
    write_class_folder(tmp_path / "train", classes=("n01", "n02"), per_class=2, size=40, ext="JPEG")
    write_class_folder(tmp_path / "val", classes=("n01", "n02"), per_class=1, size=40, ext="JPEG", seed=7)
    s = load_dataset("imagenet", root=str(tmp_path))
    assert s.pretrain.images.shape == (4, 3, 256, 256) and s.test.images.shape == (2, 3, 256, 256)
    i = s.info
    assert (i.native_size, i.crop_size, i.maxpool, i.num_classes) == (256, 224, True, 2)
    assert i.mean == (0.485, 0.456, 0.406) and i.std == (0.229, 0.224, 0.225) and i.classes == ("n01", "n02")
    small = load_dataset("imagenet", root=str(tmp_path), size=32)
    assert small.pretrain.images.shape == (4, 3, 32, 32) and small.info.crop_size == 32
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"imagenet: an ImageNet folder \(train/<wnid>/\*.JPEG and val/"):
        load_dataset("imagenet", root=str(tmp_path))


def test_dataset_info_without_reading_images(tmp_path):
    from relssl.data import dataset_info

    assert dataset_info("stl10").crop_size == 64 and dataset_info("stl10").maxpool
    assert dataset_info("cifar100").mean == (0.5071, 0.4867, 0.4408)
    assert dataset_info("fashion_mnist", size=64).native_size == 64
    write_class_folder(tmp_path, classes=("a", "b"), per_class=2, size=8)
    assert dataset_info("folder", str(tmp_path), size=8).classes == ("a", "b")


@pytest.mark.parametrize("first", [True, False])
def test_decompression_bomb_is_one_line_wherever_it_sorts(first, tmp_path, monkeypatch):
    """A (pretend) decompression bomb: Pillow refuses images beyond 2 x MAX_IMAGE_PIXELS. The folder
    loader probes the first image for its mode, then decodes every image: both paths say one line."""
    g = np.random.default_rng(0)
    save_image(tmp_path / "a" / "small.png", g.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    save_image(tmp_path / "b" / "small.png", g.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    bomb = tmp_path / ("a" if first else "b") / ("0_bomb.png" if first else "z_bomb.png")
    save_image(bomb, g.integers(0, 256, (3, 64, 64), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000: a bomb now
    with pytest.raises(DataError, match=rf"cannot (read|decode) image {bomb}: .*decompression bomb"):
        load_dataset("unlabeled_folder", root=str(tmp_path), size=8)  # no hold-out: sorted order
