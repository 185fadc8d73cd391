"""Writers of small dataset files in exactly the real formats (CIFAR pickles, STL-10 binaries,
Tiny-ImageNet and image folders of JPEG/PNG files, MedMNIST npz), for the dataset tests.

Each writer returns the pixels it wrote, in (N, C, H, W) uint8, so tests can check that the
readers give them back exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------- CIFAR
def cifar_rows(images_nchw: np.ndarray) -> np.ndarray:
    """CIFAR's row layout written out by hand: byte c*1024 + y*32 + x of a row is pixel (c, y, x)."""
    n = len(images_nchw)
    rows = np.zeros((n, 3072), dtype=np.uint8)
    for c in range(3):
        for y in range(32):
            rows[:, c * 1024 + y * 32:c * 1024 + (y + 1) * 32] = images_nchw[:, c, y, :]
    return rows


def _dump(path: Path, obj: dict, bytes_keys: bool, protocol: int) -> None:
    if bytes_keys:  # what a Python 2 pickle gives with encoding="bytes"
        obj = {k.encode(): v for k, v in obj.items()}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, bytes_keys: bool = True, protocol: int = 2,
                  seed: int = 0) -> dict[str, np.ndarray]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    g = rng(seed)
    train_x = g.integers(0, 256, (5 * per_batch, 3, 32, 32), dtype=np.uint8)
    train_y = np.arange(5 * per_batch) % 10
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        _dump(d / f"data_batch_{b + 1}", {
            "batch_label": f"training batch {b + 1} of 5", "labels": [int(v) for v in train_y[sl]],
            "data": cifar_rows(train_x[sl]), "filenames": [f"img_{i}.png" for i in range(per_batch)],
        }, bytes_keys, protocol)
    test_x = g.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    test_y = (np.arange(n_test) * 3) % 10
    _dump(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in test_y],
                             "data": cifar_rows(test_x), "filenames": ["t.png"] * n_test}, bytes_keys, protocol)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(d / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072},
          bytes_keys, protocol)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    g = rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = (np.arange(n) * 7 + 3) % 100
        coarse = fine // 5
        _dump(d / split, {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
                          "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) for v in coarse],
                          "data": cifar_rows(x)}, True, 2)
        out[f"{split}_x"], out[f"{split}_y"], out[f"{split}_coarse"] = x, fine, coarse
    _dump(d / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                       "coarse_label_names": [f"coarse{i}" for i in range(20)]}, True, 2)
    return out


# ---------------------------------------------------------------------------------------- STL-10
def stl10_bytes(images_nchw: np.ndarray) -> bytes:
    """STL-10's byte layout written out by hand: per image, per channel, column by column."""
    n = len(images_nchw)
    buf = np.zeros(n * 3 * 96 * 96, dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            base = (i * 3 + c) * 96 * 96
            for x in range(96):  # column x holds rows 0..95
                buf[base + x * 96:base + (x + 1) * 96] = images_nchw[i, c, :, x]
    return buf.tobytes()


def write_stl10(root: Path, n_train: int = 6, n_test: int = 4, n_unlabeled: int = 5, seed: int = 2,
                class_names: bool = True) -> dict[str, np.ndarray]:
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    g = rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        x = g.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        (d / f"{split}_X.bin").write_bytes(stl10_bytes(x))
        out[f"{split}_x"] = x
        if split != "unlabeled":
            y = (np.arange(n) % 10) + 1  # 1..10 on disk
            (d / f"{split}_y.bin").write_bytes(y.astype(np.uint8).tobytes())
            out[f"{split}_y"] = y - 1
    if class_names:
        (d / "class_names.txt").write_text(
            "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return out


# ---------------------------------------------------------------------------------------- images
def save_image(path: Path, chw: np.ndarray, fmt: str | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))
    img.save(path, format=fmt, **kw)


def smooth_image(g: np.random.Generator, channels: int, size: int) -> np.ndarray:
    """A smooth random image (JPEG keeps it well)."""
    base = g.integers(0, 256, (channels, 4, 4)).astype(np.float32)
    up = np.kron(base, np.ones((size // 4, size // 4), dtype=np.float32))
    return up.astype(np.uint8)


def jpeg_pixels(path: Path, channels: int = 3) -> np.ndarray:
    """What Pillow decodes from a file, (C, H, W)."""
    with Image.open(path) as img:
        a = np.array(img.convert("L" if channels == 1 else "RGB"))
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class: int = 4,
                        n_val: int = 6, seed: int = 3, gray_first: bool = True) -> dict:
    d = root / "tiny-imagenet-200"
    g = rng(seed)
    d.mkdir(parents=True)
    # wnids.txt is not sorted in the real file; labels follow the sorted order
    (d / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    (d / "words.txt").write_text("".join(f"{w}\tname of {w}, other name\n" for w in wnids) + "n00000001\tentity\n")
    train = []
    for k, w in enumerate(sorted(wnids)):
        (d / "train" / w / f"{w}_boxes.txt").parent.mkdir(parents=True, exist_ok=True)
        (d / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(per_class):
            p = d / "train" / w / "images" / f"{w}_{i}.JPEG"
            if gray_first and k == 0 and i == 0:
                save_image(p, smooth_image(g, 1, 64), "JPEG", quality=95)  # real Tiny-ImageNet has grayscale JPEGs
            else:
                save_image(p, smooth_image(g, 3, 64), "JPEG", quality=95)
            train.append((p, k))
    val = []
    lines = []
    for i in range(n_val):
        w = sorted(wnids)[i % len(wnids)]
        p = d / "val" / "images" / f"val_{i}.JPEG"
        save_image(p, smooth_image(g, 3, 64), "JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        val.append((p, sorted(wnids).index(w)))
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (d / "test" / "images").mkdir(parents=True)
    save_image(d / "test" / "images" / "test_0.JPEG", smooth_image(g, 3, 64), "JPEG")
    return {"dir": d, "train": train, "val": val}


def write_class_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 5, size: int = 16,
                       channels: int = 3, ext: str = "png", seed: int = 4) -> dict[str, list]:
    """root/<class>/<image>: PNG is lossless, so the pixels round-trip exactly."""
    g = rng(seed)
    out: dict[str, list] = {}
    for c in classes:
        out[c] = []
        for i in range(per_class):
            x = g.integers(0, 256, (channels, size, size), dtype=np.uint8)
            p = root / c / f"{c}_{i}.{ext}"
            save_image(p, x)
            out[c].append((p, x))
    return out


# ---------------------------------------------------------------------------------------- MedMNIST
def write_medmnist(path: Path, n=(10, 4, 6), size: int = 28, rgb: bool = False, multi_label: int = 0,
                   num_classes: int = 3, compressed: bool = False, seed: int = 5) -> dict[str, np.ndarray]:
    g = rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, size, size, 3) if rgb else (k, size, size)
        arrays[f"{split}_images"] = g.integers(0, 256, shape, dtype=np.uint8)
        if multi_label:
            lab = (g.random((k, multi_label)) < 0.3).astype(np.uint8)
            lab[0, :2] = 1  # at least one image with several labels
        else:
            lab = (np.arange(k) % num_classes).astype(np.uint8)[:, None]
        arrays[f"{split}_labels"] = lab
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays
