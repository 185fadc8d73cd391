"""Tiny-ImageNet-200 from its folder of JPEGs (``tiny-imagenet-200.zip`` unpacked).

Layout (http://cs231n.stanford.edu/tiny-imagenet-200.zip)::

    tiny-imagenet-200/
      wnids.txt                      the 200 WordNet ids, one a line
      words.txt                      optional: "<wnid>\\t<names, comma separated>" (class names)
      train/<wnid>/images/*.JPEG     500 images per class, 64x64
      val/images/*.JPEG              10,000 images
      val/val_annotations.txt        "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per val image

Labels are the positions of the sorted wnids (the order of torchvision's ImageFolder on
``train/``). Splits as the small-data recipe uses them: pretrain = bank = train (100k),
test = val (10k); the unlabelled ``test/`` folder is not used. Grayscale JPEGs are converted
to RGB. 100k images of 3x64x64 take 1.2 GB decoded: in memory under the default limit
(decoded once per run by a thread pool).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from relssl.data.core import DatasetInfo, DatasetSplits, locate, sized_info
from relssl.data.filebacked import FileImageDataset, FileListSource, is_image_file, place
from relssl.errors import DataError

TINY_IMAGENET_INFO = DatasetInfo(
    name="tiny_imagenet", num_classes=200, channels=3, native_size=64, crop_size=64,
    mean=(0.4802, 0.4481, 0.3975), std=(0.2302, 0.2265, 0.2262), maxpool=True,
    pretrain_split="train", bank_split="train", test_split="val",
)
TINY_LAYOUT = ("tiny-imagenet-200/ (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
               "val/val_annotations.txt)")
TINY_HINT = "; get it from http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it there"


def _find(root: Path) -> Path | None:
    for d in (root / "tiny-imagenet-200", root):
        if (d / "wnids.txt").is_file():
            return d
    return None


def _class_names(words: Path, wnids: list[str]) -> tuple[str, ...]:
    if not words.is_file():
        return tuple(wnids)
    table = {}
    for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, names = line.partition("\t")
        if names:
            table[wnid.strip()] = names.split(",")[0].strip()
    return tuple(table.get(w, w) for w in wnids)


def tiny_imagenet_files(d: Path) -> tuple[list[str], list[str], list[str], list[int], list[int]]:
    """(sorted wnids, train files, val files, train labels, val labels) of a tiny-imagenet-200 folder."""
    wnids = sorted({w.strip() for w in (d / "wnids.txt").read_text().splitlines() if w.strip()})
    if len(wnids) < 2:
        raise DataError(f"tiny_imagenet: {d / 'wnids.txt'} lists {len(wnids)} class ids; expected {TINY_LAYOUT}")
    index = {w: i for i, w in enumerate(wnids)}
    train, train_labels = [], []
    for w in wnids:
        folder = d / "train" / w / "images"
        if not folder.is_dir():
            raise DataError(f"tiny_imagenet: {folder} not found; expected {TINY_LAYOUT}")
        files = sorted(e.path for e in os.scandir(folder) if e.is_file() and is_image_file(e.name))
        if not files:
            raise DataError(f"tiny_imagenet: no images in {folder}; expected {TINY_LAYOUT}")
        train += files
        train_labels += [index[w]] * len(files)
    ann = d / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"tiny_imagenet: {ann} not found; expected {TINY_LAYOUT}")
    val, val_labels = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1].strip() not in index:
            raise DataError(f"tiny_imagenet: {ann} line {n} ({line[:60]!r}) does not name an image and a wnid "
                            "of wnids.txt; expected '<file>\\t<wnid>\\t<box>'")
        path = d / "val" / "images" / parts[0].strip()
        if not path.is_file():
            raise DataError(f"tiny_imagenet: {path} (named in {ann} line {n}) not found; expected {TINY_LAYOUT}")
        val.append(str(path))
        val_labels.append(index[parts[1].strip()])
    if not val:
        raise DataError(f"tiny_imagenet: {ann} names no images; expected {TINY_LAYOUT}")
    return wnids, train, val, train_labels, val_labels


def load_tiny_imagenet(root: str | Path | None = None, download: bool = False, *, size: int | None = None,
                       memory_limit: int | float | None = None) -> DatasetSplits:
    """Tiny-ImageNet-200: pretrain = bank = train (100k), test = val (10k); 64x64 RGB.

    relssl cannot download it (torchvision has no class for it): ``download`` only changes the
    error message.
    """
    d = locate("tiny_imagenet", root, download, _find, TINY_LAYOUT, hint=TINY_HINT)
    wnids, train, val, y_train, y_val = tiny_imagenet_files(d)
    s = size or 64
    train_ds = place(FileImageDataset([FileListSource(train, 3)], s, torch.tensor(y_train)), memory_limit,
                     "tiny_imagenet train")
    val_ds = place(FileImageDataset([FileListSource(val, 3)], s, torch.tensor(y_val)), memory_limit,
                   "tiny_imagenet val")
    info = replace(sized_info(TINY_IMAGENET_INFO, size), num_classes=len(wnids),
                   classes=_class_names(d / "words.txt", wnids))
    return DatasetSplits(info=info, pretrain=train_ds, bank=train_ds, test=val_ds, root=d, extra={"wnids": tuple(wnids)})
