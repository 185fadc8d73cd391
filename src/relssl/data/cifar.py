"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches (as torchvision downloads them).

Layout (https://www.cs.toronto.edu/~kriz/cifar.html)::

    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Each data file is a pickled dict: ``data`` is a uint8 array (N, 3072) holding each image as
three 32x32 channel planes (R, G, B), each row-major; ``labels`` (CIFAR-10) or ``fine_labels``
/ ``coarse_labels`` (CIFAR-100) are lists of N integers. Meta files hold ``label_names``
(CIFAR-10) or ``fine_label_names`` / ``coarse_label_names``.

Pickle is the official format, and unpickling can run code: the files must come from a trusted
source. relssl's reader only allows what these files hold (dicts, lists, strings, numbers and
numpy arrays) and refuses any other object, so a tampered file fails with a ``DataError``
instead of running anything.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relssl.data.core import DatasetInfo, DatasetSplits, locate, sized_info
from relssl.data.filebacked import from_tensor
from relssl.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR10_INFO = DatasetInfo(
    name="cifar10", num_classes=10, channels=3, native_size=32, crop_size=32,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), classes=CIFAR10_CLASSES, maxpool=False,
)
CIFAR100_INFO = DatasetInfo(
    name="cifar100", num_classes=100, channels=3, native_size=32, crop_size=32,
    mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), classes=(), maxpool=False,
)

CIFAR10_LAYOUT = "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta; the CIFAR-10 python version)"
CIFAR100_LAYOUT = "cifar-100-python/ (train, test, meta; the CIFAR-100 python version)"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    probe = np.zeros(1, dtype=np.uint8)
    reconstruct = probe.__reduce__()[0]
    frombuffer = probe.__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays; any other global is refused."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _text(x: Any) -> Any:
    return x.decode("latin1") if isinstance(x, bytes) else x


def read_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """One CIFAR pickle file as a dict with str keys (read safely: arrays and plain data only)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path} not found; expected a CIFAR python-version pickle file there") from None
    except pickle.UnpicklingError as err:
        if str(err).startswith("refusing"):
            raise DataError(f"{path} holds objects other than arrays and plain data ({err}); "
                            "it is not a CIFAR file: use the official files") from None
        raise DataError(f"{path} is truncated or not a pickle ({err}); expected a CIFAR python-version batch") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); "
                        "expected a CIFAR python-version batch") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict (a CIFAR python-version batch)")
    return {_text(k): v for k, v in obj.items()}


def read_cifar_batch(path: str | Path, label_key: str = "labels",
                     num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Images uint8 (N, 3, 32, 32), labels int64 (N,) and the whole dict of one CIFAR data file."""
    d = read_cifar_pickle(path)
    data, labels = d.get("data"), d.get(label_key)
    expected = f"expected a dict with 'data' (uint8 array (N, 3072)) and '{label_key}' (N integers)"
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is {got}; {expected}")
    try:
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{label_key}' missing or not integers; {expected}") from None
    if labels is None or len(lab) != len(data):
        raise DataError(f"{path}: {len(data)} images but {0 if labels is None else len(lab)} '{label_key}'; {expected}")
    if num_classes is not None and len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
        raise DataError(f"{path}: labels span {lab.min()}..{lab.max()}, expected 0..{num_classes - 1}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(lab.copy()), d


def _find_in(root: Path, folder: str, marker: str) -> Path | None:
    for d in (root / folder, root):
        if (d / marker).is_file():
            return d
    return None


def _names(meta: Path, key: str, fallback: tuple[str, ...], required: bool = True) -> tuple[str, ...]:
    """Class names from a meta file; ``fallback`` when the (optional) meta file is absent."""
    if not meta.is_file():
        return fallback
    names = read_cifar_pickle(meta).get(key)
    if not isinstance(names, (list, tuple)):
        if not required:
            return fallback
        raise DataError(f"{meta}: no '{key}' list; expected the CIFAR meta file")
    return tuple(str(_text(n)) for n in names)


def load_cifar10(root: str | Path | None = None, download: bool = False, *, size: int | None = None,
                 memory_limit: int | float | None = None) -> DatasetSplits:
    """CIFAR-10: pretrain on train (50k), kNN bank = train, test = test_batch (10k)."""
    d = locate("cifar10", root, download, lambda r: _find_in(r, "cifar-10-batches-py", "data_batch_1"), CIFAR10_LAYOUT)
    parts = [read_cifar_batch(d / f"data_batch_{i}", "labels", 10) for i in range(1, 6)]
    x_test, y_test, _ = read_cifar_batch(d / "test_batch", "labels", 10)
    x_train = torch.cat([p[0] for p in parts])
    y_train = torch.cat([p[1] for p in parts])
    info = replace(sized_info(CIFAR10_INFO, size), classes=_names(d / "batches.meta", "label_names", CIFAR10_CLASSES))
    if len(info.classes) != 10:
        raise DataError(f"{d / 'batches.meta'}: {len(info.classes)} label names, expected 10")
    train = from_tensor(x_train, y_train, size, memory_limit)
    test = from_tensor(x_test, y_test, size, memory_limit)
    return DatasetSplits(info=info, pretrain=train, bank=train, test=test, root=d)


def load_cifar100(root: str | Path | None = None, download: bool = False, *, size: int | None = None,
                  memory_limit: int | float | None = None) -> DatasetSplits:
    """CIFAR-100 (fine labels): pretrain on train (50k), kNN bank = train, test = test (10k).

    ``extra`` holds ``coarse_labels`` ({"train", "test"}) and ``coarse_classes`` when present.
    """
    d = locate("cifar100", root, download, lambda r: _find_in(r, "cifar-100-python", "train"), CIFAR100_LAYOUT)
    x_train, y_train, raw_train = read_cifar_batch(d / "train", "fine_labels", 100)
    x_test, y_test, raw_test = read_cifar_batch(d / "test", "fine_labels", 100)
    classes = _names(d / "meta", "fine_label_names", tuple(f"class_{i}" for i in range(100)))
    if len(classes) != 100:
        raise DataError(f"{d / 'meta'}: {len(classes)} fine label names, expected 100")
    info = replace(sized_info(CIFAR100_INFO, size), classes=classes)
    extra: dict[str, Any] = {}
    if "coarse_labels" in raw_train and "coarse_labels" in raw_test:
        extra["coarse_labels"] = {"train": torch.as_tensor(np.asarray(raw_train["coarse_labels"], dtype=np.int64)),
                                  "test": torch.as_tensor(np.asarray(raw_test["coarse_labels"], dtype=np.int64))}
        coarse = _names(d / "meta", "coarse_label_names", (), required=False)
        if coarse:
            extra["coarse_classes"] = coarse
    train = from_tensor(x_train, y_train, size, memory_limit)
    test = from_tensor(x_test, y_test, size, memory_limit)
    return DatasetSplits(info=info, pretrain=train, bank=train, test=test, root=d, extra=extra)
