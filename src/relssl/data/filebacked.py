"""Datasets too large for memory: images stay in their files and are decoded in batches.

A ``FileImageDataset`` holds *sources* (a list of image files, or an array: in memory or a
memory-mapped region of a binary file) and the positions it uses in them; ``read(indices)``
returns the uint8 images (B, C, S, S) at those positions, decoded and resized to the fixed size
S. It has the ``labels`` / ``__len__`` / ``subset`` API of the in-memory ``ImageDataset``, and
``materialize()`` turns it (or a subset, e.g. a kNN bank) into one.

For training, ``DecodedBatchDataset`` wraps it so a ``DataLoader`` decodes whole index batches
in worker processes::

    loader = DataLoader(DecodedBatchDataset(ds), sampler=EpochBatchSampler(len(ds), 256),
                        batch_size=None, num_workers=8, pin_memory=True, persistent_workers=True)
    for images, index in loader: ...   # uint8 (256, C, S, S), int64 (256,)

Memory maps are opened lazily in each process, so workers never copy them through pickles.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from relssl.data.core import DEFAULT_MEMORY_LIMIT, ImageDataset, as_index, resize_images, subset_indices
from relssl.errors import DataError

log = logging.getLogger("relssl")

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_GRAY_MODES = ("1", "L", "LA", "La", "F") + _SIXTEEN_BIT


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Lower-case file extensions of every format this Pillow can open (``.jpg``, ``.png``, ...)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions() and not os.path.basename(name).startswith(".")


def image_channels(path: str | os.PathLike) -> int:
    """1 if the image at ``path`` is stored as grayscale, else 3 (reads the header only)."""
    try:
        with Image.open(path) as img:
            return 1 if img.mode in _GRAY_MODES else 3
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # (a decompression bomb is refused here too: the first image of a folder is probed for its mode)
        raise DataError(f"cannot read image {path}: {err}; expected an image file Pillow can decode") from err


def _convert(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in _SIXTEEN_BIT:  # 16-bit grayscale: scale to 8 bits (convert("L") would clip at 255)
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P":
        img = img.convert("RGBA")
    want = "L" if channels == 1 else "RGB"
    return img if img.mode == want else img.convert(want)


def decode_image(path: str | os.PathLike, channels: int, size: int) -> np.ndarray:
    """Decode one image file to uint8 (C, size, size).

    Grayscale or RGB by ``channels`` (16-bit images are scaled to 8 bits, alpha is dropped);
    images of another size are scaled so the shorter side is ``size`` and centre-cropped
    (bilinear, antialiased; JPEGs are decoded at a reduced scale first when much larger).
    Raises ``DataError`` naming the file when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and (img.width >= 2 * size and img.height >= 2 * size):
                img.draft("L" if channels == 1 else "RGB", (size, size))
            img.load()
            img = _convert(img, channels)
            if img.size != (size, size):
                img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path}: {err}; expected an intact image file Pillow can decode") from err
    if arr.ndim == 2:
        return arr[None]
    return arr.transpose(2, 0, 1)


class FileListSource:
    """Image files decoded with Pillow (see ``decode_image``).

    The paths are kept as one byte buffer plus offsets, not a list of Python strings: forked
    DataLoader workers then share them without copy-on-write growth (a list of a million
    strings would be copied into every worker as their reference counts change).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], channels: int) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._ends = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self._buf = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
        self.channels = channels
        self.count = len(encoded)
        self.native_size = None

    def path(self, i: int) -> str:
        return os.fsdecode(self._buf[self._ends[i]:self._ends[i + 1]].tobytes())

    @property
    def paths(self) -> list[str]:
        return [self.path(i) for i in range(self.count)]

    def read(self, idx: np.ndarray, size: int) -> torch.Tensor:
        out = np.empty((len(idx), self.channels, size, size), dtype=np.uint8)
        for j, i in enumerate(idx.tolist()):
            out[j] = decode_image(self.path(i), self.channels, size)
        return torch.from_numpy(out)

    def describe(self) -> str:
        return f"{self.count} image files" + (f" under {os.path.dirname(self.path(0))}" if self.count else "")


class ArraySource:
    """uint8 images in one array: in memory, or a memory-mapped region of a binary file.

    ``layout`` names the stored axes: ``NCHW``, ``NHWC``, ``NHW`` (grayscale) or ``NCWH``
    (channel planes stored column-major, as STL-10 does).
    """

    LAYOUTS = ("NCHW", "NHWC", "NHW", "NCWH")

    def __init__(self, array: np.ndarray | None = None, *, path: str | os.PathLike | None = None,
                 offset: int = 0, shape: tuple[int, ...] | None = None, layout: str = "NCHW") -> None:
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {self.LAYOUTS}, got {layout!r}")
        if array is None and (path is None or shape is None):
            raise ValueError("ArraySource needs an array, or a path and a shape")
        self.layout = layout
        self.path = None if path is None else str(path)
        self.offset = offset
        self._array = array
        self.shape = tuple(int(s) for s in (array.shape if array is not None else shape))
        if array is not None and array.dtype != np.uint8:
            raise DataError(f"image arrays must be uint8, got {array.dtype}")
        if len(self.shape) != len(layout):
            raise DataError(f"array of shape {self.shape} does not match layout {layout}")
        axes = dict(zip(layout, self.shape))
        self.channels = axes.get("C", 1)
        self.count = self.shape[0]
        self.native_size = axes["H"]
        self._square = axes["H"] == axes["W"]

    def _data(self) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.shape)
        return self._array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.path is not None:  # a memory map: reopened in the receiving process
            state["_array"] = None
        return state

    def read(self, idx: np.ndarray, size: int) -> torch.Tensor:
        arr = self._data()
        n = len(idx)
        if n and idx[-1] - idx[0] == n - 1 and (n == 1 or bool(np.all(np.diff(idx) == 1))):
            block = np.array(arr[idx[0]:idx[-1] + 1])  # a copy: never alias a (read-only) memory map
        else:
            order = np.argsort(idx, kind="stable")
            block = np.empty((n,) + self.shape[1:], dtype=np.uint8)
            block[order] = arr[idx[order]]
        if self.layout == "NHW":
            block = block[:, None]
        elif self.layout == "NHWC":
            block = block.transpose(0, 3, 1, 2)
        elif self.layout == "NCWH":
            block = block.transpose(0, 1, 3, 2)
        x = torch.from_numpy(np.ascontiguousarray(block))
        return resize_images(x, size)

    def describe(self) -> str:
        return f"{self.count} images in {self.path}" if self.path else f"{self.count} images in memory"


Source = Union[FileListSource, ArraySource]


class FileImageDataset:
    """Images left in their files, read in batches: ``read(indices) -> uint8 (B, C, S, S)``.

    ``sources`` are concatenated; ``index`` (default: all, in order) picks this dataset's items
    from the concatenation; ``labels`` (or None) are aligned with this dataset's items.
    """

    is_file_backed = True

    def __init__(self, sources: Sequence[Source], image_size: int, labels: torch.Tensor | None = None,
                 index=None) -> None:
        self.sources = tuple(sources)
        self.image_size = int(image_size)
        if not self.sources:
            raise DataError("the dataset is empty: no images were found")
        chans = {s.channels for s in self.sources}
        if len(chans) != 1 or chans.pop() not in (1, 3):
            raise DataError(f"all sources must have the same channel count, 1 or 3; got {[s.channels for s in self.sources]}")
        self.channels = self.sources[0].channels
        self._offsets = np.cumsum([0] + [s.count for s in self.sources]).astype(np.int64)
        total = int(self._offsets[-1])
        self.index = None if index is None else as_index(index)
        n = total if self.index is None else len(self.index)
        if n == 0:
            raise DataError("the dataset is empty: no images were found")
        if self.index is not None and (int(self.index.min()) < 0 or int(self.index.max()) >= total):
            raise DataError(f"index out of range for {total} images")
        if labels is not None and len(labels) != n:
            raise DataError(f"{n} images but {len(labels)} labels")
        self.labels = labels
        self._len = n

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"FileImageDataset({len(self)} images, {self.channels}x{self.image_size}x{self.image_size}, "
                f"{'labelled' if self.labels is not None else 'unlabelled'}, "
                f"from {'; '.join(s.describe() for s in self.sources)})")

    @property
    def nbytes(self) -> int:
        """Bytes the decoded images would take in memory (N * C * S * S)."""
        return len(self) * self.channels * self.image_size * self.image_size

    def _global(self, pos: torch.Tensor) -> np.ndarray:
        if len(pos) and (int(pos.min()) < -len(self) or int(pos.max()) >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} images")
        pos = torch.where(pos < 0, pos + len(self), pos)
        g = pos if self.index is None else self.index[pos]
        return g.numpy().astype(np.int64, copy=False)

    def read(self, indices) -> torch.Tensor:
        """The images at these positions, uint8 (B, C, S, S), in the order given."""
        pos = as_index(indices)
        g = self._global(pos)
        s = self.image_size
        if len(self.sources) == 1:
            return self.sources[0].read(g, s)
        out = torch.empty((len(g), self.channels, s, s), dtype=torch.uint8)
        which = np.searchsorted(self._offsets, g, side="right") - 1
        for k in np.unique(which).tolist():
            m = which == k
            out[torch.from_numpy(m)] = self.sources[k].read(g[m] - self._offsets[k], s)
        return out

    def take(self, indices) -> "FileImageDataset":
        pos = as_index(indices)
        g = torch.from_numpy(self._global(pos))
        return FileImageDataset(self.sources, self.image_size, None if self.labels is None else self.labels[pos], g)

    def subset(self, n: int | None, seed: int = 0) -> "FileImageDataset":
        """A seeded random subset of ``n`` images (class-stratified when labels exist); same rule as ImageDataset."""
        if n is None or n >= len(self):
            return self
        return self.take(subset_indices(len(self), self.labels, n, seed))

    def materialize(self, workers: int | None = None, chunk: int = 256) -> ImageDataset:
        """Decode every image into memory: an ``ImageDataset`` (threads decode chunks in parallel)."""
        n, s = len(self), self.image_size
        images = torch.empty((n, self.channels, s, s), dtype=torch.uint8)
        if n > 20_000:
            log.info("relssl: decoding %d images (%s) into memory", n, "; ".join(src.describe() for src in self.sources))
        starts = range(0, n, chunk)

        def work(i: int) -> None:
            images[i:i + chunk] = self.read(range(i, min(n, i + chunk)))

        workers = workers or min(8, os.cpu_count() or 1)
        if workers <= 1 or n <= chunk:
            for i in starts:
                work(i)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, starts))
        return ImageDataset(images, self.labels)


class DecodedBatchDataset(Dataset):
    """A torch Dataset whose item for an index tensor is ``(images uint8 (B, C, S, S), index)``.

    Use it with ``sampler=EpochBatchSampler(...)`` and ``batch_size=None``: each worker decodes
    a whole batch. Works with ``ImageDataset`` too (then it only gathers).
    """

    def __init__(self, dataset: FileImageDataset | ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        idx = as_index(index)
        return self.dataset.read(idx), idx


def resolve_memory_limit(memory_limit: int | float | None) -> float:
    return DEFAULT_MEMORY_LIMIT if memory_limit is None else float(memory_limit)


def place(ds: FileImageDataset, memory_limit: int | float | None, what: str = "") -> ImageDataset | FileImageDataset:
    """``ds`` decoded into memory when its images take at most ``memory_limit`` bytes, else itself."""
    limit = resolve_memory_limit(memory_limit)
    if ds.nbytes <= limit:
        return ds.materialize()
    log.info("relssl: %s%d images take %.1f GiB decoded, over the %.1f GiB memory limit: reading them from disk "
             "in batches", f"{what}: " if what else "", len(ds), ds.nbytes / 2**30, limit / 2**30)
    return ds


def from_tensor(images: torch.Tensor, labels: torch.Tensor | None, size: int | None,
                memory_limit: int | float | None) -> ImageDataset | FileImageDataset:
    """An in-memory uint8 (N, C, H, W) tensor, resized to ``size``; kept as an array-backed
    ``FileImageDataset`` (resized per batch) when the resized images exceed the memory limit."""
    n, c, h, _ = images.shape
    s = size or h
    if n * c * s * s <= resolve_memory_limit(memory_limit):
        return ImageDataset(resize_images(images, s), labels)
    return FileImageDataset([ArraySource(images.numpy(), layout="NCHW")], s, labels)
