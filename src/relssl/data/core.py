"""The shapes every dataset loader returns: in-memory images, per-dataset defaults, splits.

A dataset here is the raw images, never augmented: the views are made on the training device
by ``relssl.augment``. Labels are kept for evaluation and diagnostics only; no method sees them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from relssl.errors import DataError

DEFAULT_MEMORY_LIMIT = 8 * 2**30
"""A split whose decoded images (N*C*S*S bytes) exceed this stays on disk (``FileImageDataset``)."""


def as_index(indices) -> torch.Tensor:
    """Any sequence of positions (tensor, array, list, range) as a 1-D int64 tensor."""
    if isinstance(indices, torch.Tensor):
        return indices.reshape(-1).long()
    if isinstance(indices, range):
        return torch.arange(indices.start, indices.stop, indices.step)
    return torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))


def subset_indices(num: int, labels: torch.Tensor | None, n: int, seed: int) -> torch.Tensor:
    """Sorted positions of a seeded random subset of ``n`` of ``num`` items, class-stratified with labels.

    With labels, a random order of each class is interleaved so that any prefix is balanced.
    """
    if n <= 0:
        raise DataError(f"subset size must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        idx = torch.randperm(num, generator=g)[:n]
    else:
        order = torch.randperm(num, generator=g)
        lab = labels[order]
        lab = lab - lab.min()
        rank = torch.zeros_like(lab)
        for c in lab.unique():
            m = lab == c
            rank[m] = torch.arange(int(m.sum()))
        key = rank * (int(lab.max()) + 1) + lab
        idx = order[torch.argsort(key, stable=True)][:n]
    return idx.sort().values


def resize_images(images: torch.Tensor, size: int | None, chunk: int = 2048) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) to (N, C, size, size): bilinear with antialiasing, rounded.

    Returns ``images`` itself when it already has that size (or ``size`` is None).
    """
    if size is None or (images.shape[-2] == size and images.shape[-1] == size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


@dataclass
class ImageDataset:
    """Images as one uint8 tensor (N, C, H, W) and optional integer labels (N,).

    ``FileImageDataset`` has the same ``labels`` / ``__len__`` / ``subset`` / ``read`` /
    ``materialize`` API for datasets too large to hold in memory; ``is_file_backed`` tells them apart.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None

    is_file_backed: ClassVar[bool] = False

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

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def read(self, indices) -> torch.Tensor:
        """The uint8 images (B, C, H, W) at these positions (same call as ``FileImageDataset.read``)."""
        return self.images[as_index(indices)]

    def materialize(self, workers: int | None = None) -> "ImageDataset":
        """Already in memory: itself."""
        return self

    def take(self, indices) -> "ImageDataset":
        idx = as_index(indices)
        return ImageDataset(self.images[idx], None if self.labels is None else self.labels[idx])

    def subset(self, n: int | None, seed: int = 0) -> "ImageDataset":
        """A seeded random subset of ``n`` images (class-stratified when labels exist)."""
        if n is None or n >= len(self):
            return self
        return self.take(subset_indices(len(self), self.labels, n, seed))


class AnyImageDataset(Protocol):
    """What a split holds: an in-memory :class:`ImageDataset` or a file-backed
    ``relssl.data.FileImageDataset`` (``is_file_backed`` tells them apart)."""

    labels: torch.Tensor | None
    is_file_backed: ClassVar[bool]

    def __len__(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    def read(self, indices) -> torch.Tensor: ...

    def materialize(self, workers: int | None = None) -> ImageDataset: ...

    def subset(self, n: int | None, seed: int = 0) -> AnyImageDataset: ...


@dataclass
class DatasetInfo:
    """Per-dataset defaults.

    ``native_size`` is the stored image size (for folders: the size images are resized to);
    ``crop_size`` the pretraining crop; ``maxpool`` whether the ResNet keeps its max-pool;
    ``*_split`` say which of the dataset's own splits serve as pretraining set, kNN bank /
    linear-probe training set and test set. ``multi_label`` datasets have no class labels on
    their splits (kNN / linear evaluation need one label per image).
    """

    name: str
    num_classes: int
    channels: int
    native_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    maxpool: bool = False  # keep the ResNet max-pool (the small-data recipe keeps it for 64-px datasets)
    pretrain_split: str = "train"
    bank_split: str = "train"
    test_split: str = "test"
    multi_label: bool = False


@dataclass
class DatasetSplits:
    """The splits one experiment uses: pretraining images, the kNN bank / probe-train set, the test set.

    Each split is an ``ImageDataset`` (in memory) or, when it is larger than the memory limit, a
    ``FileImageDataset`` (read in batches; ``.materialize()`` loads it). ``extra`` holds what some
    datasets have beyond that (a validation split, coarse labels, multi-labels, a note on why
    there are no labels).
    """

    info: DatasetInfo
    pretrain: AnyImageDataset
    bank: AnyImageDataset
    test: AnyImageDataset
    root: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.bank.labels is not None and self.test.labels is not None


def check_splits(splits: DatasetSplits) -> DatasetSplits:
    """Labels in range and at least two classes in the bank when there are labels."""
    name = splits.info.name
    for role in ("pretrain", "bank", "test"):
        ds = getattr(splits, role)
        if len(ds) == 0:
            raise DataError(f"{name}: the {role} split is empty")
        if ds.channels != splits.info.channels:
            raise DataError(f"{name}: the {role} split has {ds.channels} channels, expected {splits.info.channels}")
        lab = ds.labels
        if lab is None:
            continue
        if lab.ndim != 1:
            raise DataError(f"{name}: {role} labels have shape {tuple(lab.shape)}; expected one class index per image")
        if role != "pretrain" and (int(lab.min()) < 0 or int(lab.max()) >= splits.info.num_classes):
            raise DataError(
                f"{name}: {role} labels span {int(lab.min())}..{int(lab.max())}, "
                f"expected 0..{splits.info.num_classes - 1}"
            )
    if splits.bank.labels is not None and len(splits.bank.labels.unique()) < 2:
        raise DataError(
            f"{name}: the labelled bank split holds a single class; kNN / linear evaluation need at least "
            "two classes (pretrain without labels instead: data.dataset=unlabeled_folder, monitored by RankMe)"
        )
    return splits


def channel_stats(ds: AnyImageDataset, max_images: int = 10_000, seed: int = 0,
                  chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels (in [0, 1]) of ``ds`` or a seeded sample of it."""
    n = len(ds)
    if n > max_images:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    else:
        idx = torch.arange(n)
    c = ds.channels
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    count = 0
    for i in range(0, len(idx), chunk):
        x = ds.read(idx[i:i + chunk]).to(torch.float64).div_(255)
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def candidate_roots(name: str, root: str | os.PathLike | None, extra: tuple[Path, ...] = ()) -> list[Path]:
    """Where to look for dataset ``name``: ``root`` if given, else ``$RELSSL_DATA/<name>``,
    ``$RELSSL_DATA``, ``extra`` and ``~/.cache/relssl/<name>`` (the download target, last)."""
    if root:
        return [Path(root).expanduser()]
    roots = []
    env = os.environ.get("RELSSL_DATA")
    if env:
        roots.append(Path(env).expanduser() / name)
        roots.append(Path(env).expanduser())
    roots.extend(extra)
    roots.append(Path.home() / ".cache" / "relssl" / name)
    return roots


TORCHVISION_DOWNLOADS = {
    # relssl name: (torchvision class, constructor keyword sets that fetch every file we read)
    "cifar10": ("CIFAR10", ({"train": True},)),
    "cifar100": ("CIFAR100", ({"train": True},)),
    "stl10": ("STL10", ({"split": "train"},)),
    "fashion_mnist": ("FashionMNIST", ({"train": True}, {"train": False})),
    "mnist": ("MNIST", ({"train": True}, {"train": False})),
    "kmnist": ("KMNIST", ({"train": True}, {"train": False})),
}


def torchvision_download(name: str, target: Path) -> bool:
    """Fetch ``name`` with torchvision's own (checksummed) download into ``target``; False if it failed.

    torchvision is used only to download: relssl reads the files with its own readers. For the
    archives (CIFAR, STL-10) only the archive is fetched and unpacked, nothing is decoded twice.
    """
    cls_name, calls = TORCHVISION_DOWNLOADS[name]
    print(f"relssl: {name} not found; trying torchvision's download into {target} ...", flush=True)
    try:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, cls_name)
        target.mkdir(parents=True, exist_ok=True)
        url, filename = getattr(cls, "url", None), getattr(cls, "filename", None)
        if url and filename:
            download_and_extract_archive(url, str(target), filename=filename, md5=getattr(cls, "tgz_md5", None))
        else:
            for kwargs in calls:
                cls(str(target), download=True, **kwargs)
        return True
    except Exception as err:  # noqa: BLE001 - offline machines end here; the caller raises the layout error
        print(f"relssl: download failed ({type(err).__name__}: {str(err)[:160]})", flush=True)
        return False


def sized_info(info: DatasetInfo, size: int | None) -> DatasetInfo:
    """``info`` for images delivered at ``size``: a size other than the native one becomes the
    native and the crop size (the pretraining crop then covers the resized image)."""
    if size is None or size == info.native_size:
        return info
    return replace(info, native_size=size, crop_size=size)


def locate(name: str, root: str | os.PathLike | None, download: bool, find: Callable[[Path], Path | None],
           expected: str, extra_roots: tuple[Path, ...] = (), hint: str = "") -> Path:
    """The directory holding dataset ``name``: ``find(candidate)`` is tried on each candidate root
    (see ``candidate_roots``); where allowed (``download`` and no ``root``), torchvision's download
    into ``~/.cache/relssl/<name>`` is tried last. ``expected`` describes the layout for the error,
    ``hint`` ends it (e.g. where to get the files)."""
    roots = candidate_roots(name, root, extra_roots)
    for r in roots:
        found = find(r)
        if found is not None:
            return found
    if download and root is None and name in TORCHVISION_DOWNLOADS:
        if torchvision_download(name, roots[-1]):
            found = find(roots[-1])
            if found is not None:
                return found
    where = ", ".join(str(r) for r in roots)
    how = "pass data.root=DIR"
    if name in TORCHVISION_DOWNLOADS:
        target = candidate_roots(name, None)[-1]  # the download's place, whatever data.root was
        how += f", or data.download=true without data.root where the machine is online (downloads into {target})"
    raise DataError(f"{name}: {expected} not found in {where}; {how}{hint}")
