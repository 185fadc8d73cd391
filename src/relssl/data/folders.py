"""Folders of image files, in any format Pillow decodes (JPEG, PNG, BMP, TIFF, WebP, ...).

Three layouts, told apart by what ``root`` holds (hidden files and folders are skipped):

* ``root/train/<class>/**/<image>`` and ``root/val/<class>/**/<image>`` (or ``test/``),
  ImageNet style: pretrain = bank = train, test = val (or test).
* ``root/<class>/**/<image>``: one labelled folder; a seeded, class-stratified ``test_fraction``
  (default 20%) of each class is held out as the test set, the rest is pretrain = bank.
* images directly in ``root`` (and any subfolders): unlabelled, for pretraining only; the bank
  and test splits are the same images without labels (the kNN monitor must be off).
  ``unlabeled_folder`` takes every image under ``root`` this way, whatever the nesting.

Labels are the positions of the sorted class-folder names. Every image is decoded to
``channels`` (default: those of the first image, 1 for grayscale, else 3) and scaled so its
shorter side is ``size`` (default 64) and centre-cropped to ``size`` x ``size``. Mean and std
are measured on (a sample of) the pretraining images unless given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from relssl.data.core import DatasetInfo, DatasetSplits, channel_stats
from relssl.data.filebacked import FileImageDataset, FileListSource, image_channels, is_image_file, place
from relssl.errors import DataError

DEFAULT_FOLDER_SIZE = 64
FOLDER_LAYOUT = ("root/<class>/<image> (labelled), root/train/<class>/<image> + root/val/<class>/<image>, "
                 "or images directly in root (unlabelled)")


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[str]:
    """Every image file under ``folder`` (recursively, hidden entries skipped), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found += [os.path.join(dirpath, f) for f in filenames if is_image_file(f)]
    return sorted(found)


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p.name)), key=lambda p: p.name)


def _direct_images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and is_image_file(p.name)]


def _class_files(folder: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    """(classes, files, labels) of ``folder/<class>/**/<image>``; ``classes`` fixes the label order."""
    dirs = _subdirs(folder)
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"folder: {folder / unknown[0]} is not a class of the training folder "
                            f"({len(classes)} classes); expected the same class folders in train/ and {folder.name}/")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for d in dirs:
        found = list_images(d)
        if not found:
            raise DataError(f"folder: class folder {d} holds no images; expected {FOLDER_LAYOUT}")
        files += found
        labels += [index[d.name]] * len(found)
    return list(classes), files, labels


def _holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) positions: ``fraction`` of each class (at least one image of any class
    with two or more) goes to test."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique().tolist():
        pos = torch.nonzero(labels == c).flatten()
        pos = pos[torch.randperm(len(pos), generator=g)]
        k = min(len(pos) - 1, max(1, round(fraction * len(pos)))) if len(pos) >= 2 else 0
        test.append(pos[:k])
        train.append(pos[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _no_images(root: Path) -> DataError:
    return DataError(f"folder: no image files under {root}; expected {FOLDER_LAYOUT}")


def load_image_folder(root: str | os.PathLike | None = None, download: bool = False, *, size: int | None = None,
                      memory_limit: int | float | None = None, channels: int | None = None,
                      labelled: bool | None = None, test_fraction: float = 0.2, seed: int = 0,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      name: str = "folder") -> DatasetSplits:
    """A folder of images (see the module doc for the layouts).

    ``labelled``: None detects the layout; False takes every image under ``root`` without labels;
    True requires class folders. ``download`` is accepted for a uniform signature and ignored.
    """
    if root is None:
        raise DataError(f"{name}: no folder given; set data.root=DIR ({FOLDER_LAYOUT})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: {root} is not a directory; expected {FOLDER_LAYOUT}")
    if not 0 < test_fraction < 1:
        raise DataError(f"{name}: test_fraction must be between 0 and 1, got {test_fraction}")
    s = size or DEFAULT_FOLDER_SIZE
    classes: list[str] = []
    splits_used = ("all", "all", "all")
    extra: dict = {}
    train_files: list[str]
    train_labels = test_files = test_labels = None
    test_dir = next((root / v for v in ("val", "test") if (root / v).is_dir()), None)
    if labelled is False:
        train_files = list_images(root)
        if not train_files:
            raise _no_images(root)
    elif (root / "train").is_dir() and test_dir is not None:
        classes, train_files, train_labels = _class_files(root / "train")
        _, test_files, test_labels = _class_files(test_dir, classes)
        splits_used = ("train", "train", test_dir.name)
    elif _direct_images(root):
        if labelled:
            raise DataError(f"{name}: {root} holds images directly; labelled folders need class subfolders "
                            f"({FOLDER_LAYOUT}); use data.dataset=unlabeled_folder to pretrain without labels")
        train_files = list_images(root)
    else:
        if not _subdirs(root):
            raise _no_images(root)
        if not any(list_images(d) for d in _subdirs(root)):
            raise _no_images(root)
        classes, files, labels_all = _class_files(root)
        lab = torch.tensor(labels_all)
        if len(classes) >= 2:
            tr, te = _holdout(lab, test_fraction, seed)
            if len(te) == 0:
                raise DataError(f"{name}: {root} has too few images per class to hold out a test set")
            train_files = [files[i] for i in tr.tolist()]
            test_files = [files[i] for i in te.tolist()]
            train_labels, test_labels = lab[tr].tolist(), lab[te].tolist()
            splits_used = ("train", "train", f"held-out {test_fraction:g}")
            extra["holdout"] = {"fraction": test_fraction, "seed": seed}
        else:
            train_files, train_labels = files, labels_all
    if train_labels is not None and len(classes) < 2:
        raise DataError(f"{name}: {root} has a single class folder ({classes[0]!r}); kNN / linear evaluation need at "
                        "least two classes: use data.dataset=unlabeled_folder to pretrain on these images without labels")
    if channels is None:
        channels = image_channels(train_files[0])
    if channels not in (1, 3):
        raise DataError(f"{name}: channels must be 1 or 3, got {channels}")

    def make(files: list[str], labels: list[int] | None, what: str):
        ds = FileImageDataset([FileListSource(files, channels)], s, None if labels is None else torch.tensor(labels))
        return place(ds, memory_limit, f"{name} {what}")

    pretrain = make(train_files, train_labels, splits_used[0])
    if test_files is None:  # unlabelled
        bank = test = pretrain
        extra["labels_note"] = (f"{name}: {root} has no class folders, so no labels: kNN / linear evaluation "
                                "are off for it; the run is monitored label-free (RankMe, trainer.monitor=auto)")
    else:
        bank = pretrain
        test = make(test_files, test_labels, splits_used[2])
    if mean is None or std is None:
        mean, std = channel_stats(pretrain, max_images=10_000 if not pretrain.is_file_backed else 1_000, seed=seed)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"{name}: mean / std need {channels} values, got {len(mean)} and {len(std)}")
    info = DatasetInfo(
        name=name, num_classes=len(classes), channels=channels, native_size=s, crop_size=s,
        mean=tuple(float(m) for m in mean), std=tuple(float(v) for v in std), classes=tuple(classes),
        maxpool=s >= 64, pretrain_split=splits_used[0], bank_split=splits_used[1], test_split=splits_used[2],
    )
    return DatasetSplits(info=info, pretrain=pretrain, bank=bank, test=test, root=root, extra=extra)


def load_unlabeled_folder(root: str | os.PathLike | None = None, download: bool = False, *, size: int | None = None,
                          memory_limit: int | float | None = None, channels: int | None = None, seed: int = 0,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> DatasetSplits:
    """Every image under ``root`` (any nesting), without labels: for pretraining only."""
    return load_image_folder(root, download, size=size, memory_limit=memory_limit, channels=channels,
                             labelled=False, seed=seed, mean=mean, std=std, name="unlabeled_folder")


IMAGENET_INFO = DatasetInfo(
    name="imagenet", num_classes=1000, channels=3, native_size=256, crop_size=224,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), maxpool=True,
    pretrain_split="train", bank_split="train", test_split="val",
)
IMAGENET_LAYOUT = "an ImageNet folder (train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)"


def _find_imagenet(root: Path) -> Path | None:
    for d in (root, root / "imagenet", root / "ILSVRC2012"):
        if (d / "train").is_dir() and (d / "val").is_dir():
            return d
    return None


def load_imagenet(root: str | os.PathLike | None = None, download: bool = False, *, size: int | None = None,
                  memory_limit: int | float | None = None) -> DatasetSplits:
    """ImageNet (or any ImageNet-style folder) as ``train/<class>/`` and ``val/<class>/`` folders.

    pretrain = bank = train, test = val. Images are decoded to ``size`` (default 256: shorter
    side scaled to 256, centre crop) for a 224 pretraining crop, with ImageNet's mean / std. The
    validation images must be sorted into class folders (the usual ``valprep`` step). At 256 px
    ImageNet's train split takes 252 GB decoded: it is file-backed under any usual memory limit.
    """
    from dataclasses import replace

    from relssl.data.core import locate

    d = locate("imagenet", root, download, _find_imagenet, IMAGENET_LAYOUT)
    s = size or IMAGENET_INFO.native_size
    splits = load_image_folder(d, size=s, memory_limit=memory_limit, channels=3, labelled=True,
                               mean=IMAGENET_INFO.mean, std=IMAGENET_INFO.std, name="imagenet")
    if splits.info.test_split != "val":
        raise DataError(f"imagenet: {d} is not laid out as {IMAGENET_LAYOUT}")
    splits.info = replace(splits.info, native_size=s, crop_size=min(IMAGENET_INFO.crop_size, s), maxpool=True)
    return splits
