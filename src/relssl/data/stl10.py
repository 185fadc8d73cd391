"""STL-10 from its binary files (``stl10_binary/``, as torchvision downloads them).

Layout (https://cs.stanford.edu/~acoates/stl10/)::

    stl10_binary/  train_X.bin  train_y.bin  test_X.bin  test_y.bin  unlabeled_X.bin  [class_names.txt]

``*_X.bin``: raw uint8, 96x96x3 = 27,648 bytes per image, no header; each image is three
channel planes (R, G, B), each stored column-major (pixel (row y, column x) of a plane is at
byte ``x * 96 + y``). ``*_y.bin``: one uint8 label per image, 1..10. train holds 5,000
labelled images, test 8,000, unlabeled 100,000 (2.7 GB).

Splits as the small-data recipe uses them (docs/methods/small-data-recipe.md): pretrain = train + unlabeled (105k), kNN bank and
linear-probe training = train (5k), test = test (8k). The files are memory-mapped; a split goes
into memory when its decoded size is under the memory limit (105k images at 96 px: 2.9 GB).
The pretraining split carries no labels (the unlabeled part has none); ``extra['pretrain_labels']``
holds train's labels followed by -1 for the unlabeled images, for diagnostics.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from relssl.data.core import DatasetInfo, DatasetSplits, ImageDataset, locate, sized_info
from relssl.data.filebacked import ArraySource, FileImageDataset, place
from relssl.errors import DataError

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
STL10_INFO = DatasetInfo(
    name="stl10", num_classes=10, channels=3, native_size=96, crop_size=64,
    mean=(0.4408, 0.4279, 0.3867), std=(0.2682, 0.2610, 0.2686), classes=STL10_CLASSES, maxpool=True,
    pretrain_split="train+unlabeled", bank_split="train", test_split="test",
)
STL10_LAYOUT = "stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin)"
IMAGE_BYTES = 3 * 96 * 96


def stl10_images(path: str | Path) -> ArraySource:
    """A memory-mapped ``*_X.bin`` file as an image source (N, 3, 96, 96)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"stl10: {path} not found; expected {STL10_LAYOUT}")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(f"stl10: {path} holds {size} bytes, not a multiple of {IMAGE_BYTES} "
                        "(96x96x3 uint8 images); the file is truncated or not an STL-10 image file")
    return ArraySource(path=path, shape=(size // IMAGE_BYTES, 3, 96, 96), layout="NCWH")


def stl10_labels(path: str | Path, count: int) -> torch.Tensor:
    """The labels of a ``*_y.bin`` file, shifted from 1..10 to 0..9."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"stl10: {path} not found; expected {STL10_LAYOUT}")
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) != count:
        raise DataError(f"stl10: {path} holds {len(raw)} labels for {count} images; expected one byte per image")
    if len(raw) and (raw.min() < 1 or raw.max() > 10):
        raise DataError(f"stl10: {path} holds labels {raw.min()}..{raw.max()}; expected 1..10")
    return torch.from_numpy(raw.astype(np.int64) - 1)


def read_stl10_images(path: str | Path) -> torch.Tensor:
    """All images of one ``*_X.bin`` file in memory, uint8 (N, 3, 96, 96) row-major."""
    src = stl10_images(path)
    return FileImageDataset([src], 96).materialize().images


def _find(root: Path) -> Path | None:
    for d in (root / "stl10_binary", root):
        if (d / "train_X.bin").is_file():
            return d
    return None


def _class_names(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return STL10_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) != 10:
        raise DataError(f"stl10: {path} lists {len(names)} class names, expected 10")
    return names


def load_stl10(root: str | Path | None = None, download: bool = False, *, size: int | None = None,
               memory_limit: int | float | None = None, unlabeled: bool = True) -> DatasetSplits:
    """STL-10: pretrain = train + unlabeled (``unlabeled=False``: train only), bank = train, test = test.

    ``size`` resizes the 96-px images (default: kept at 96; the pretraining crop is 64).
    """
    d = locate("stl10", root, download, _find, STL10_LAYOUT)
    s = size or 96
    train_src = stl10_images(d / "train_X.bin")
    test_src = stl10_images(d / "test_X.bin")
    y_train = stl10_labels(d / "train_y.bin", train_src.count)
    y_test = stl10_labels(d / "test_y.bin", test_src.count)
    sources = [train_src]
    if unlabeled:
        sources.append(stl10_images(d / "unlabeled_X.bin"))
    n_unl = sources[1].count if unlabeled else 0
    pretrain = place(FileImageDataset(sources, s), memory_limit, "stl10 train+unlabeled" if unlabeled else "stl10 train")
    if isinstance(pretrain, ImageDataset):  # the train images are its first rows: share them
        bank = ImageDataset(pretrain.images[:train_src.count], y_train)
    else:
        bank = place(FileImageDataset([train_src], s, y_train), memory_limit, "stl10 train")
    if not unlabeled:
        pretrain = bank
    test = place(FileImageDataset([test_src], s, y_test), memory_limit, "stl10 test")
    info = replace(sized_info(STL10_INFO, size), classes=_class_names(d / "class_names.txt"),
                   pretrain_split="train+unlabeled" if unlabeled else "train")
    extra = {"pretrain_labels": torch.cat([y_train, torch.full((n_unl,), -1, dtype=torch.long)])}
    return DatasetSplits(info=info, pretrain=pretrain, bank=bank, test=test, root=d, extra=extra)
