"""In-memory image datasets: one uint8 tensor (N, C, H, W) plus labels, and their splits.

A dataset here is the raw images, never augmented: the views are made on the training device
by ``relssl.augment``. Labels are kept for evaluation and diagnostics only; no method sees them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from relssl.data.idx import read_idx
from relssl.errors import DataError


@dataclass
class ImageDataset:
    """Images as one uint8 tensor (N, C, H, W) and optional integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.images.shape[1] not in (1, 3):
            raise DataError(f"images must have 1 or 3 channels, got {self.images.shape[1]}")
        if len(self.images) == 0:
            raise DataError("the dataset is empty: no images were found")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int | None, seed: int = 0) -> "ImageDataset":
        """A seeded random subset of ``n`` images (class-stratified when labels exist)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"subset size must be positive, got {n}")
        g = torch.Generator().manual_seed(seed)
        if self.labels is None:
            idx = torch.randperm(len(self), generator=g)[:n]
        else:
            # interleave a random order of each class so any prefix is class-balanced
            order = torch.randperm(len(self), generator=g)
            labels = self.labels[order]
            rank = torch.zeros_like(labels)
            for c in labels.unique():
                m = labels == c
                rank[m] = torch.arange(int(m.sum()))
            key = rank * (int(labels.max()) + 1) + labels
            idx = order[torch.argsort(key, stable=True)][:n]
        idx, _ = idx.sort()
        return ImageDataset(self.images[idx], None if self.labels is None else self.labels[idx])


@dataclass
class DatasetInfo:
    """Per-dataset defaults."""

    name: str
    num_classes: int
    channels: int
    native_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    maxpool: bool = False  # keep the ResNet max-pool (the specs keep it for 64-px datasets)


@dataclass
class DatasetSplits:
    """The splits one experiment uses: pretraining images, the kNN bank / probe-train set, the test set."""

    info: DatasetInfo
    pretrain: ImageDataset
    bank: ImageDataset
    test: ImageDataset
    root: Path | None = None
    extra: dict = field(default_factory=dict)


FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_INFO = DatasetInfo(
    name="fashion_mnist", num_classes=10, channels=1, native_size=28, crop_size=32,
    mean=(0.2860,), std=(0.3530,), classes=FASHION_MNIST_CLASSES,
)
MNIST_INFO = DatasetInfo(
    name="mnist", num_classes=10, channels=1, native_size=28, crop_size=32,
    mean=(0.1307,), std=(0.3081,), classes=tuple(str(i) for i in range(10)),
)
KMNIST_INFO = DatasetInfo(
    name="kmnist", num_classes=10, channels=1, native_size=28, crop_size=32,
    mean=(0.1918,), std=(0.3483,), classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _find_idx(root: Path, stem: str) -> Path | None:
    for sub in ("", "raw", "FashionMNIST/raw", "MNIST/raw", "KMNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / (stem + suffix)
            if p.is_file():
                return p
    return None


def _idx_layout_error(name: str, roots: list[Path]) -> DataError:
    where = ", ".join(str(r) for r in roots) or "(no directory given)"
    files = ", ".join(f + "[.gz]" for f in IDX_FILES.values())
    hint = ""
    if name == "fashion_mnist":
        hint = " or run `apt-get install dataset-fashion-mnist` (Debian)"
    return DataError(
        f"{name}: IDX files not found in {where}; put {files} in one directory and pass data.root=DIR{hint}"
    )


def load_idx_dataset(root: Path, info: DatasetInfo) -> DatasetSplits:
    """Read an MNIST-style dataset (the four IDX files) from ``root``."""
    paths = {k: _find_idx(root, v) for k, v in IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        raise _idx_layout_error(info.name, [root])
    tensors = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        imgs, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise DataError(
                f"{info.name}: {paths[split + '_images']} holds shape {tuple(imgs.shape)} and its labels "
                f"{tuple(labels.shape)}; expected (N, H, W) images and N labels"
            )
    train = ImageDataset(tensors["train_images"].unsqueeze(1).contiguous(), tensors["train_labels"].long())
    test = ImageDataset(tensors["test_images"].unsqueeze(1).contiguous(), tensors["test_labels"].long())
    return DatasetSplits(info=info, pretrain=train, bank=train, test=test, root=root)


def _candidate_roots(name: str, root: str | None) -> list[Path]:
    if root:
        return [Path(root).expanduser()]
    roots = []
    env = os.environ.get("RELSSL_DATA")
    if env:
        roots.append(Path(env).expanduser() / name)
        roots.append(Path(env).expanduser())
    if name == "fashion_mnist":
        roots.append(DEBIAN_FASHION_MNIST)
    roots.append(Path.home() / ".cache" / "relssl" / name)
    return roots


def _try_install(name: str, roots: list[Path]) -> Path | None:
    """Fetch a missing dataset: Debian's package for Fashion-MNIST where apt works, else torchvision."""
    if name == "fashion_mnist" and shutil.which("apt-get") and os.geteuid() == 0:
        print("relssl: Fashion-MNIST not found; installing the Debian package dataset-fashion-mnist ...", flush=True)
        for cmd in (["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"],
                    ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if cmd[1] == "install" and done.returncode == 0 and _find_idx(DEBIAN_FASHION_MNIST, IDX_FILES["train_images"]):
                return DEBIAN_FASHION_MNIST
    target = roots[-1]
    try:
        import torchvision.datasets as tvd

        cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "kmnist": tvd.KMNIST}[name]
        print(f"relssl: {name} not found; trying torchvision's download into {target} ...", flush=True)
        cls(str(target), train=True, download=True)
        cls(str(target), train=False, download=True)
        return target
    except Exception as err:  # noqa: BLE001 - offline machines end here, with the message below
        print(f"relssl: download failed ({type(err).__name__}: {str(err)[:120]})", flush=True)
        return None


def _idx_loader(info: DatasetInfo) -> Callable[..., DatasetSplits]:
    def load(root: str | None = None, download: bool = False) -> DatasetSplits:
        roots = _candidate_roots(info.name, root)
        for r in roots:
            if _find_idx(r, IDX_FILES["train_images"]) is not None:
                return load_idx_dataset(r, info)
        if download and root is None:
            got = _try_install(info.name, roots)
            if got is not None:
                return load_idx_dataset(got, info)
        raise _idx_layout_error(info.name, roots)

    return load


DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "fashion_mnist": _idx_loader(FASHION_MNIST_INFO),
    "mnist": _idx_loader(MNIST_INFO),
    "kmnist": _idx_loader(KMNIST_INFO),
}


def load_dataset(name: str, root: str | None = None, download: bool = False) -> DatasetSplits:
    """Load a dataset by name. ``download`` allows installing / downloading a missing one."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root=root, download=download)
