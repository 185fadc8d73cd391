"""The dataset registry (``DATASETS``, ``load_dataset``) and the MNIST-style IDX datasets.

A dataset here is the raw images, never augmented: the views are made on the training device
by ``relssl.augment``. Labels are kept for evaluation and diagnostics only; no method sees them.
Each format has its own module (``cifar``, ``stl10``, ``tiny_imagenet``, ``folders``,
``medmnist``; the IDX format is here); ``docs/datasets.md`` describes the layouts.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from relssl.data.cifar import CIFAR10_INFO, CIFAR100_INFO, load_cifar10, load_cifar100
from relssl.data.core import (  # noqa: F401 - re-exported: the public names of this module
    DEFAULT_MEMORY_LIMIT,
    DatasetInfo,
    DatasetSplits,
    ImageDataset,
    candidate_roots,
    check_splits,
    sized_info,
    torchvision_download,
)
from relssl.data.filebacked import FileImageDataset, from_tensor  # noqa: F401
from relssl.data.folders import IMAGENET_INFO, load_image_folder, load_imagenet, load_unlabeled_folder
from relssl.data.idx import read_idx
from relssl.data.medmnist import load_medmnist
from relssl.data.stl10 import STL10_INFO, load_stl10
from relssl.data.tiny_imagenet import TINY_IMAGENET_INFO, load_tiny_imagenet
from relssl.errors import DataError


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


def load_idx_dataset(root: Path, info: DatasetInfo, *, size: int | None = None,
                     memory_limit: int | float | None = None) -> DatasetSplits:
    """Read an MNIST-style dataset (the four IDX files) from ``root``: pretrain = bank = train, test = t10k.

    ``size`` resizes the 28-px images (the pretraining crop is then ``size`` too).
    """
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
    train = from_tensor(tensors["train_images"].unsqueeze(1).contiguous(), tensors["train_labels"].long(),
                        size, memory_limit)
    test = from_tensor(tensors["test_images"].unsqueeze(1).contiguous(), tensors["test_labels"].long(),
                       size, memory_limit)
    return DatasetSplits(info=sized_info(info, size), pretrain=train, bank=train, test=test, root=root)


def _candidate_roots(name: str, root: str | None) -> list[Path]:
    """Where an IDX dataset may be: core's places, plus Debian's Fashion-MNIST package."""
    return candidate_roots(name, root, (DEBIAN_FASHION_MNIST,) if name == "fashion_mnist" else ())


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
    return target if torchvision_download(name, target) else None


def _idx_loader(info: DatasetInfo) -> Callable[..., DatasetSplits]:
    def load(root: str | None = None, download: bool = False, *, size: int | None = None,
             memory_limit: int | float | None = None) -> DatasetSplits:
        roots = _candidate_roots(info.name, root)
        for r in roots:
            if _find_idx(r, IDX_FILES["train_images"]) is not None:
                return load_idx_dataset(r, info, size=size, memory_limit=memory_limit)
        if download and root is None:
            got = _try_install(info.name, roots)
            if got is not None:
                return load_idx_dataset(got, info, size=size, memory_limit=memory_limit)
        raise _idx_layout_error(info.name, roots)

    load.__name__ = f"load_{info.name}"
    load.__doc__ = f"{info.name}: the four IDX files (see load_idx_dataset)."
    return load


DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "fashion_mnist": _idx_loader(FASHION_MNIST_INFO),
    "mnist": _idx_loader(MNIST_INFO),
    "kmnist": _idx_loader(KMNIST_INFO),
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "tiny_imagenet": load_tiny_imagenet,
    "imagenet": load_imagenet,
    "medmnist": load_medmnist,
    "folder": load_image_folder,
    "unlabeled_folder": load_unlabeled_folder,
}
"""Every loader takes ``(root=None, download=False, *, size=None, memory_limit=None)`` and its own
keyword options (``load_dataset`` passes them on); ``medmnist`` also takes ``flavour``."""


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False, *,
                 size: int | None = None, memory_limit: int | float | None = None, **options) -> DatasetSplits:
    """Load a dataset by name: its splits, each in memory or file-backed.

    ``name`` is a key of ``DATASETS``, or ``medmnist:<flavour>`` (e.g. ``medmnist:pathmnist_64``).
    ``root`` is the dataset's directory (or file, for ``medmnist``); None looks in the usual
    places. ``download`` allows installing / downloading a missing dataset (torchvision's
    download for CIFAR, STL-10 and the MNIST family, into ``~/.cache/relssl/<name>``).
    ``size`` resizes the images (default: the native size; 64 for folders). A split whose
    decoded images exceed ``memory_limit`` bytes (default 8 GiB) stays on disk as a
    ``FileImageDataset``. ``options`` go to the loader (e.g. ``channels`` for folders).
    """
    base, _, variant = name.partition(":")
    if base not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    loader = DATASETS[base]
    if variant:
        if base != "medmnist":
            raise DataError(f"dataset {base!r} has no variants; {name!r} is only allowed as medmnist:<flavour>")
        options["flavour"] = variant
    if size is not None and (not isinstance(size, int) or size < 8):
        raise DataError(f"{name}: image size must be an integer of at least 8, got {size!r}")
    params = inspect.signature(loader).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        allowed = [k for k in params if k not in ("root", "download", "size", "memory_limit", "options")]
        raise DataError(f"{name}: unknown option {unknown[0]!r}; this dataset takes {', '.join(allowed) or 'none'}")
    splits = loader(root=root, download=download, size=size, memory_limit=memory_limit, **options)
    return check_splits(splits)


DATASET_INFO: dict[str, DatasetInfo] = {
    "fashion_mnist": FASHION_MNIST_INFO, "mnist": MNIST_INFO, "kmnist": KMNIST_INFO,
    "cifar10": CIFAR10_INFO, "cifar100": CIFAR100_INFO, "stl10": STL10_INFO,
    "tiny_imagenet": TINY_IMAGENET_INFO, "imagenet": IMAGENET_INFO,
}
"""The fixed defaults of the datasets that have them (folders and MedMNIST depend on the files)."""


def dataset_info(name: str, root: str | os.PathLike | None = None, *, size: int | None = None,
                 **options) -> DatasetInfo:
    """A dataset's ``DatasetInfo`` without decoding its images where the defaults are fixed.

    Class names are the built-in ones (CIFAR-100 has none; Tiny-ImageNet / ImageNet have their
    folder's); folders and MedMNIST files are opened file-backed (``memory_limit=0``) to read theirs.
    """
    base = name.partition(":")[0]
    if base in DATASET_INFO and not options:
        return sized_info(DATASET_INFO[base], size)
    return load_dataset(name, root, size=size, memory_limit=0, **options).info
