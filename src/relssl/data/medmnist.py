"""MedMNIST (v2 and MedMNIST+) 2-D datasets from their ``.npz`` files.

One file per dataset and size: ``pathmnist.npz`` (28 px), ``pathmnist_64.npz``,
``pathmnist_128.npz``, ``pathmnist_224.npz`` (as the medmnist package saves them, by default in
``~/.medmnist``). Keys: ``train_images``, ``val_images``, ``test_images`` (uint8, (N, H, W)
grayscale or (N, H, W, 3) RGB) and ``train_labels``, ``val_labels``, ``test_labels`` ((N, 1)
class indices, or (N, L) 0/1 columns for the multi-label ChestMNIST).

Which file:

* ``load_dataset("medmnist", root="/data/pathmnist_64.npz")``: the file itself;
* ``load_dataset("medmnist:pathmnist_64")``: ``pathmnist_64.npz`` in ``data.root`` (a
  directory) or the usual places: ``$RELSSL_DATA/medmnist``, ``$RELSSL_DATA``, ``~/.medmnist``,
  ``~/.cache/relssl/medmnist``;
* ``load_dataset("medmnist", root=DIR)``: the only ``.npz`` in DIR.

Splits: pretrain = bank = train, test = test; val is kept in ``extra['val']``. Multi-label
files load for pretraining, but their splits carry no labels (kNN / linear evaluation of
multi-label sets is unsupported): ``extra['multi_labels']`` holds them and
``extra['labels_note']`` says why. Uncompressed ``.npz`` members are memory-mapped, so a split
over the memory limit (e.g. TissueMNIST-224, 165k x 224 x 224) is read in batches from disk.
Mean and std are measured on (up to 10,000 of) the training images.
"""

from __future__ import annotations

import logging
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from relssl.data.core import DatasetInfo, DatasetSplits, candidate_roots, channel_stats
from relssl.data.filebacked import ArraySource, FileImageDataset, place
from relssl.errors import DataError

log = logging.getLogger("relssl")

MEDMNIST_LAYOUT = ("a MedMNIST .npz (train_images, train_labels, val_images, val_labels, test_images, "
                   "test_labels; images uint8 (N, H, W) or (N, H, W, 3))")
MEDMNIST_HINT = ("; get the file from MedMNIST (https://medmnist.com, or the medmnist package, which saves to "
                 "~/.medmnist) and pass data.root=FILE.npz, or data.dataset=medmnist:<flavour> data.root=DIR")

_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")

# the 2-D flavours: task and class names (from the MedMNIST INFO table)
MEDMNIST_FLAVOURS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pathmnist": ("multi-class", ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                                  "normal colon mucosa", "cancer-associated stroma",
                                  "colorectal adenocarcinoma epithelium")),
    "chestmnist": ("multi-label", ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                                   "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                                   "pleural", "hernia")),
    "dermamnist": ("multi-class", ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                                   "vascular lesions")),
    "octmnist": ("multi-class", ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal")),
    "pneumoniamnist": ("binary-class", ("normal", "pneumonia")),
    "retinamnist": ("ordinal-regression", ("0", "1", "2", "3", "4")),
    "breastmnist": ("binary-class", ("malignant", "normal, benign")),
    "bloodmnist": ("multi-class", ("basophil", "eosinophil", "erythroblast",
                                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                                   "lymphocyte", "monocyte", "neutrophil", "platelet")),
    "tissuemnist": ("multi-class", ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                                    "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
                                    "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb")),
    "organamnist": ("multi-class", _ORGANS),
    "organcmnist": ("multi-class", _ORGANS),
    "organsmnist": ("multi-class", _ORGANS),
}


def npz_member(path: str | Path, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz``: memory-mapped when stored uncompressed in C order, else read."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(key + ".npy")
            except KeyError:
                raise DataError(f"{path} has no '{key}' array (it holds {', '.join(n[:-4] for n in zf.namelist())}); "
                                f"expected {MEDMNIST_LAYOUT}") from None
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as f:
                    f.seek(info.header_offset)
                    local = f.read(30)
                    if len(local) == 30 and local[:4] == b"PK\x03\x04":
                        n, m = struct.unpack("<HH", local[26:30])
                        f.seek(info.header_offset + 30 + n + m)
                        version = np.lib.format.read_magic(f)
                        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                        if reader is not None:
                            shape, fortran, dtype = reader(f)
                            if not fortran and dtype == np.uint8 and len(shape) >= 1 and shape[0] > 0:
                                return np.memmap(path, dtype=np.uint8, mode="r", offset=f.tell(), shape=shape)
            with zf.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as err:
        raise DataError(f"{path} is truncated or not an .npz ({type(err).__name__}: {err}); expected {MEDMNIST_LAYOUT}") from None


def _image_source(path: Path, key: str) -> ArraySource:
    arr = npz_member(path, key)
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' is {arr.dtype}; expected uint8 images")
    if arr.ndim == 3 and arr.shape[1] == arr.shape[2]:
        layout = "NHW"
    elif arr.ndim == 4 and arr.shape[3] == 3 and arr.shape[1] == arr.shape[2]:
        layout = "NHWC"
    elif arr.ndim == 4 or arr.ndim == 5:
        raise DataError(f"{path}: '{key}' has shape {arr.shape}: 3-D MedMNIST volumes are not supported; "
                        "expected 2-D images (N, H, W) or (N, H, W, 3)")
    else:
        raise DataError(f"{path}: '{key}' has shape {arr.shape}; expected square images (N, H, W) or (N, H, W, 3)")
    if isinstance(arr, np.memmap):
        return ArraySource(path=arr.filename, offset=arr.offset, shape=arr.shape, layout=layout)
    return ArraySource(arr, layout=layout)


def _labels(path: Path, key: str, count: int) -> np.ndarray:
    lab = np.asarray(npz_member(path, key))
    if lab.ndim == 1:
        lab = lab[:, None]
    integer = np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_
    if lab.ndim != 2 or len(lab) != count or not integer:
        raise DataError(f"{path}: '{key}' has shape {lab.shape} ({lab.dtype}) for {count} images; "
                        "expected integer labels (N, 1) or (N, L)")
    return lab.astype(np.int64)


def find_medmnist(root: str | Path | None, flavour: str | None) -> Path:
    """The .npz file to read (see the module doc)."""
    if root is not None and str(root).endswith(".npz"):
        path = Path(root).expanduser()
        if not path.is_file():
            raise DataError(f"medmnist: {path} not found; expected {MEDMNIST_LAYOUT}{MEDMNIST_HINT}")
        return path
    if flavour:
        fname = flavour if flavour.endswith(".npz") else flavour + ".npz"
        roots = candidate_roots("medmnist", root, (Path.home() / ".medmnist",))
        for r in roots:
            if (r / fname).is_file():
                return r / fname
        raise DataError(f"medmnist: {fname} not found in {', '.join(map(str, roots))}{MEDMNIST_HINT}")
    if root is None:
        raise DataError("medmnist: which file? pass data.root=/path/to/pathmnist.npz, or "
                        "data.dataset=medmnist:pathmnist (found in data.root, $RELSSL_DATA or ~/.medmnist)")
    d = Path(root).expanduser()
    found = sorted(d.glob("*.npz")) if d.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"medmnist: no .npz file in {d}; expected {MEDMNIST_LAYOUT}{MEDMNIST_HINT}")
    raise DataError(f"medmnist: {d} holds {len(found)} .npz files ({', '.join(p.name for p in found[:6])}); "
                    "pick one with data.root=FILE.npz or data.dataset=medmnist:<flavour>")


def load_medmnist(root: str | Path | None = None, download: bool = False, *, flavour: str | None = None,
                  size: int | None = None, memory_limit: int | float | None = None) -> DatasetSplits:
    """A MedMNIST 2-D file: pretrain = bank = train, test = test (val in ``extra['val']``).

    ``size`` resizes the stored images (default: kept; pick the stored size by the file instead,
    e.g. ``pathmnist_64.npz``). relssl cannot download MedMNIST: ``download`` is ignored.
    """
    path = find_medmnist(root, flavour)
    stem = path.stem
    base = re.sub(r"_(28|64|128|224)$", "", stem)
    task, names = MEDMNIST_FLAVOURS.get(base, ("", ()))
    if base.endswith("3d"):
        raise DataError(f"medmnist: {path.name} is a 3-D MedMNIST set; only the 2-D sets are supported")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path} is truncated or not an .npz ({err}); expected {MEDMNIST_LAYOUT}") from None
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        if key not in members:
            raise DataError(f"{path} has no '{key}' array (it holds {', '.join(sorted(members))}); expected {MEDMNIST_LAYOUT}")
    splits = [s for s in ("train", "val", "test") if f"{s}_images" in members and f"{s}_labels" in members]
    src = {s: _image_source(path, f"{s}_images") for s in splits}
    lab = {s: _labels(path, f"{s}_labels", src[s].count) for s in splits}
    shapes = {(v.channels, v.native_size) for v in src.values()}
    if len(shapes) != 1:
        raise DataError(f"{path}: the splits hold images of different shapes {sorted(shapes)}; expected one size")
    channels, native = shapes.pop()
    widths = {v.shape[1] for v in lab.values()}
    multi = task == "multi-label" or max(widths) > 1
    s = size or native
    name = f"medmnist:{stem}"
    if multi:
        num_classes = max(widths)
        note = (f"{name} is multi-label ({num_classes} binary labels per image): kNN / linear evaluation of "
                "multi-label sets is unsupported, so its splits carry no labels; the run is monitored label-free "
                "(RankMe, trainer.monitor=auto)")
        log.warning("relssl: %s", note)
        labels = {k: None for k in splits}
    else:
        labels = {k: torch.from_numpy(v[:, 0].copy()) for k, v in lab.items()}
        num_classes = len(names) if names else int(max(int(v.max()) for v in labels.values())) + 1
    ds = {k: place(FileImageDataset([src[k]], s, labels[k]), memory_limit, f"{name} {k}") for k in splits}
    extra: dict = {"file": str(path), "task": task or ("multi-label" if multi else "multi-class")}
    if "val" in ds:
        extra["val"] = ds["val"]
    if multi:
        extra["multi_labels"] = {k: torch.from_numpy(v) for k, v in lab.items()}
        extra["labels_note"] = note
    mean, std = channel_stats(ds["train"], max_images=10_000)
    info = DatasetInfo(
        name=name, num_classes=num_classes, channels=channels, native_size=s, crop_size=32 if s == 28 else s,
        mean=mean, std=std, classes=names if names else tuple(str(i) for i in range(num_classes)),
        maxpool=s >= 64, multi_label=multi,
    )
    return DatasetSplits(info=info, pretrain=ds["train"], bank=ds["train"], test=ds["test"], root=path, extra=extra)
