"""Embeddings of a checkpoint's frozen network for every image of a split (``relssl embed``).

The features are those of the kNN evaluation: the backbone (or, with ``head="projector"``, the
backbone + projection head the loss contrasts) in eval mode, on the images at the run's
evaluation size, normalised with the dataset's mean / std, through
:func:`relssl.evaluate.knn.extract_features`; optionally L2-normalised. Every image of the split
is embedded (a ``data.subset`` / ``data.bank_subset`` / ``data.test_subset`` override picks a
seeded, class-balanced subset by the kNN rule instead; the run's own subset values are not used).

Python API::

    from relssl.evaluate import embed_checkpoint, write_embeddings

    emb = embed_checkpoint("runs/my-run", ["data.dataset=unlabeled_folder", "data.root=/my/images"])
    emb.embeddings, emb.index, emb.labels, emb.paths     # (N, D) float32, (N,) int64, None, [str]
    write_embeddings("embeddings.npz", emb)              # or .safetensors / .csv, written atomically

File formats (``docs/embeddings.md``): ``.npz`` with the arrays ``embeddings``, ``index``,
``split``, ``labels`` (when known), ``paths`` (image files, when known) and ``meta`` (JSON);
``.safetensors`` with the tensors ``embeddings``, ``index``, ``split`` (codes into the metadata's
``split_names``), ``labels`` and the paths in the metadata; ``.csv`` with one row per image:
``index, split, path, label, e0 .. e{D-1}`` (path / label columns only when known).
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from relssl.errors import ConfigError, DataError

SPLITS = ("pretrain", "bank", "test", "all")
HEADS = ("backbone", "projector")
SUFFIXES = (".npz", ".safetensors", ".csv")
FORMAT = "relssl-embeddings"
FORMAT_VERSION = "1"

# datasets read from image files (FileListSource), whose file paths can be reported
FILE_DATASETS = ("folder", "unlabeled_folder", "imagenet", "tiny_imagenet")
# which data.* key picks a subset of which split (the kNN evaluation's rule)
SUBSET_KEYS = {"subset": "pretrain", "bank_subset": "bank", "test_subset": "test"}
# safetensors headers are limited to 100 MB; paths beyond this many characters are left out
MAX_HEADER_PATH_CHARS = 50_000_000


@dataclass
class Embeddings:
    """One row per image: ``embeddings`` (N, D) float32, ``index`` (N,) int64 (position in its
    split), ``split`` (its split's name), ``labels`` (N,) int64 or None (-1 where a split of
    ``all`` has none), ``paths`` (image files) or None, ``meta`` (checkpoint, dataset, size, ...)."""

    embeddings: torch.Tensor
    index: torch.Tensor
    split: list[str]
    labels: torch.Tensor | None = None
    paths: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


# ------------------------------------------------------------------------------------ computing


def projection_network(method: nn.Module) -> nn.Module:
    """The backbone followed by the projection head whose output the loss contrasts."""
    for name in ("online", "student"):
        net = getattr(method, name, None)
        if isinstance(net, nn.Module) and getattr(net, "backbone", None) is method.backbone:
            return net
    head = getattr(method, "instance_head", None)  # WCL: encoder + g
    if isinstance(head, nn.Module):
        return nn.Sequential(method.backbone, head)
    raise ConfigError(f"method {type(method).__name__} has no projection head relssl embed knows; use --head backbone")


def split_roles(splits, split: str) -> list[str]:
    """The splits ``split`` names: itself, or for ``all`` pretrain, bank, test with each set once."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if split != "all":
        return [split]
    roles: list[str] = []
    for role in ("pretrain", "bank", "test"):
        if not any(getattr(splits, role) is getattr(splits, r) for r in roles):
            roles.append(role)
    return roles


def file_paths(ds) -> list[str] | None:
    """The image file of every item of a file-backed dataset read from image files, else None."""
    from relssl.data import FileListSource

    if not getattr(ds, "is_file_backed", False) or not all(isinstance(s, FileListSource) for s in ds.sources):
        return None
    offsets = np.cumsum([0] + [s.count for s in ds.sources]).astype(np.int64)
    g = np.arange(offsets[-1]) if ds.index is None else ds.index.numpy().astype(np.int64)
    which = np.searchsorted(offsets, g, side="right") - 1
    return [ds.sources[k].path(int(i - offsets[k])) for k, i in zip(which.tolist(), g.tolist())]


def _file_backed_splits(setup):
    """The setup's dataset opened again file-backed (nothing decoded), for its file paths; None
    when it is not a dataset of image files or not the one the config names."""
    from relssl.data import DATASETS, load_dataset

    d = setup.cfg.data
    base = d.dataset.partition(":")[0]
    if base not in FILE_DATASETS or setup.splits.info.name != base:
        return None
    options = dict(d.options)
    params = inspect.signature(DATASETS[base]).parameters
    if "mean" in params and options.get("mean") is None and options.get("std") is None:
        info = setup.splits.info  # already measured: not again
        options.update(mean=list(info.mean), std=list(info.std))
    return load_dataset(d.dataset, setup.splits.root or d.root, size=d.image_size, memory_limit=0, **options)


def _split_paths(setup, role: str, reopened: dict) -> list[str] | None:
    ds = getattr(setup.splits, role)
    paths = file_paths(ds)
    if paths is not None:
        return paths
    if "splits" not in reopened:
        reopened["splits"] = _file_backed_splits(setup)
    if reopened["splits"] is None:
        return None
    fb = getattr(reopened["splits"], role)
    paths = file_paths(fb)
    ends = [0, len(ds) - 1]
    if paths is None or len(fb) != len(ds) or not torch.equal(fb.read(ends), ds.read(ends)):
        raise DataError(f"{setup.cfg.data.dataset}: the files under {setup.splits.root} changed while embedding "
                        f"the {role} split (its images no longer match their paths); run relssl embed again")
    return paths


def _features(setup, net: nn.Module, ds, normalize: bool, batch_size: int,
              log: Callable[[str], None] | None = None, what: str = "") -> torch.Tensor:
    """Features (N, D) float32 on the CPU of every image of ``ds``, read a chunk at a time."""
    from relssl.metrics.knn import extract_features

    n = len(ds)
    chunk = max(batch_size, 4096)
    out = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if ds.is_file_backed:
            images = ds.take(range(start, stop)).materialize().images
        else:
            images = ds.images[start:stop]
        out.append(extract_features(net, images, size=setup.eval_size, mean=setup.mean, std=setup.std,
                                    batch_size=batch_size, device=setup.device,
                                    channels_last=setup.channels_last, normalize=normalize).cpu())
        if log is not None:
            log(f"embed: {what} {stop}/{n} images")
    return torch.cat(out)


def embed_split(setup, split: str = "all", head: str = "backbone", normalize: bool = False,
                batch_size: int = 1024, subsets: Mapping[str, int | None] | None = None,
                paths: bool = True, log: Callable[[str], None] | None = None) -> Embeddings:
    """Embed every image of ``split`` (``pretrain``, ``bank``, ``test`` or ``all``) of an
    :class:`relssl.evaluate.checkpoint.EvalSetup`.

    ``head``: ``backbone`` (the evaluated features) or ``projector`` (backbone + projection head).
    ``normalize``: L2-normalise each row. ``subsets``: split -> size of a seeded, class-balanced
    subset (the rule of ``data.*_subset``); absent or None: every image. ``paths``: report the
    image files of datasets read from files (a folder may be listed a second time for them).
    """
    from relssl.data.core import subset_indices

    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if head != "backbone" and getattr(setup, "exported", False):
        raise ConfigError(f"{setup.ckpt_path} holds the backbone alone, not the {head}; use --head backbone, or "
                          "embed from the run directory")
    roles = split_roles(setup.splits, split)
    net = setup.backbone if head == "backbone" else projection_network(setup.method)
    subsets = dict(subsets or {})
    feats, index, names, labels, files = [], [], [], [], []
    reopened: dict = {}
    for role in roles:
        ds = getattr(setup.splits, role)
        n = subsets.get(role)
        if n is not None and n < 1:
            raise ConfigError(f"subset of the {role} split must be a positive number of images, got {n}")
        if n is None or n >= len(ds):
            idx = torch.arange(len(ds))
            part = ds
        else:
            idx = subset_indices(len(ds), ds.labels, n, setup.cfg.seed)
            part = ds.take(idx)
        if len(part) == 0:
            raise DataError(f"{setup.cfg.data.dataset}: the {role} split holds no images; nothing to embed")
        feats.append(_features(setup, net, part, normalize, batch_size, log, role))
        index.append(idx)
        names += [role] * len(idx)
        labels.append(None if part.labels is None else part.labels.long().cpu())
        if paths and files is not None:
            p = _split_paths(setup, role, reopened)
            files = None if p is None else files + [os.path.abspath(p[i]) for i in idx.tolist()]
    if all(lab is None for lab in labels):
        all_labels = None
    else:
        all_labels = torch.cat([torch.full((len(i),), -1, dtype=torch.long) if lab is None else lab
                                for lab, i in zip(labels, index)])
    emb = torch.cat(feats).float().contiguous()
    info = setup.splits.info
    meta = {**setup.header("embed"), "format": FORMAT, "format_version": FORMAT_VERSION,
            "root": str(setup.splits.root or setup.cfg.data.root or ""), "split": split,
            "splits": {r: len(i) for r, i in zip(roles, index)}, "head": head, "normalize": normalize,
            "count": int(emb.shape[0]), "dim": int(emb.shape[1]), "mean": list(info.mean), "std": list(info.std),
            "channels": info.channels, "classes": list(info.classes) if all_labels is not None else []}
    return Embeddings(embeddings=emb, index=torch.cat(index).long(), split=names, labels=all_labels,
                      paths=files if paths else None, meta=meta)


# ------------------------------------------------------------------------ from a checkpoint


def subsets_from_overrides(overrides: list[str] | None) -> dict[str, int | None]:
    """Split -> subset size for the ``data.subset`` / ``data.bank_subset`` / ``data.test_subset``
    overrides given (only those: a run's saved subsets are its training budget, not a selection)."""
    from relssl.config import parse_override

    out: dict[str, int | None] = {}
    for text in overrides or []:
        path, value = parse_override(text)
        if len(path) == 2 and path[0] == "data" and path[1] in SUBSET_KEYS:
            out[SUBSET_KEYS[path[1]]] = value
    return out


def _trained_maxpool(maxpool: bool | None, data) -> bool | None:
    """The max-pool setting the run's backbone was built with (None: cannot tell without its data)."""
    from relssl.data import DATASET_INFO
    from relssl.data.folders import DEFAULT_FOLDER_SIZE

    if maxpool is not None:
        return maxpool
    base = data.dataset.partition(":")[0]
    if base in DATASET_INFO:
        return DATASET_INFO[base].maxpool
    if base in ("folder", "unlabeled_folder"):
        return (data.image_size or DEFAULT_FOLDER_SIZE) >= 64
    return None


def _trained_eval_size(data) -> int | None:
    """The evaluation size of the run's own dataset (its config's ``data`` section), where known without it."""
    from relssl.data import DATASET_INFO
    from relssl.data.core import sized_info
    from relssl.data.folders import DEFAULT_FOLDER_SIZE

    if data.eval_size:
        return data.eval_size
    base = data.dataset.partition(":")[0]
    if base in DATASET_INFO:
        info = sized_info(DATASET_INFO[base], data.image_size)
        native, crop = info.native_size, data.crop_size or info.crop_size
    elif base in ("folder", "unlabeled_folder"):
        native = data.image_size or DEFAULT_FOLDER_SIZE
        crop = data.crop_size or native
    else:
        return None
    return native if native >= crop else crop


def _data_notes(setup, trained) -> list[str]:
    """Notes when the embedded images are not the run's and their preprocessing may differ from its."""
    from relssl.data import DATASET_INFO

    d = setup.cfg.data
    notes = []
    if (d.dataset, d.root or None) == (trained.dataset, trained.root or None):
        return notes
    size = _trained_eval_size(trained)
    if size is not None and size != setup.eval_size:
        notes.append(f"the images were embedded at {setup.eval_size} px but the run was evaluated at {size} px; "
                     f"add data.image_size={size} to embed them at that size")
    if d.dataset.partition(":")[0] in ("folder", "unlabeled_folder") and d.options.get("mean") is None:
        run_base = trained.dataset.partition(":")[0]
        hint = "data.options.mean=[...] data.options.std=[...] (the run's values)"
        if run_base in DATASET_INFO:
            info = DATASET_INFO[run_base]
            hint = (f"data.options.mean=[{','.join(f'{v:g}' for v in info.mean)}] "
                    f"data.options.std=[{','.join(f'{v:g}' for v in info.std)}] ({run_base}'s values)")
        notes.append(f"the images were normalised with the mean / std measured on them (as relssl eval does), "
                     f"not necessarily the run's; to use the run's add {hint}")
    return notes


def embed_checkpoint(path: str | Path, overrides: list[str] | None = None, *, split: str = "all",
                     head: str = "backbone", normalize: bool = False, batch_size: int = 1024,
                     device: str | torch.device | None = None, subsets: Mapping[str, int | None] | None = None,
                     splits=None, log: Callable[[str], None] | None = None,
                     backbone: torch.nn.Module | None = None) -> Embeddings:
    """Embed a split of a checkpoint's (or run directory's) dataset, or with ``data.*`` overrides
    another one (``data.dataset=unlabeled_folder data.root=/my/images``); see :func:`embed_split`.
    ``backbone``: a new instance of your own module, for a run trained with ``pretrain(cfg, backbone=...)``.

    The data are decoded with the backbone's input channels (folders: ``data.options.channels``
    unless given) and, when the config leaves the max-pool to the dataset, the backbone keeps
    the run's. ``subsets`` default: those of the ``data.*_subset`` overrides.
    """
    from relssl.data import DATASETS
    from relssl.evaluate.checkpoint import infer_in_channels, prepare, read_checkpoint, resolve_device

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    resolve_device(device)  # a missing CUDA device fails before any work
    overrides = list(overrides or [])
    ckpt_path, ckpt, run_cfg = read_checkpoint(path)  # the run's own data section (read_checkpoint edits it in place)
    trained = run_cfg.data
    in_channels = infer_in_channels({k: v for k, v in ckpt["state_dict"].items() if k.startswith("method.")})
    del ckpt
    _, _, cfg = read_checkpoint(ckpt_path, overrides)
    base = cfg.data.dataset.partition(":")[0]
    takes_channels = base in DATASETS and "channels" in inspect.signature(DATASETS[base]).parameters
    if splits is None:
        if takes_channels and cfg.data.options.get("channels") is None:  # decode to the backbone's channels
            overrides.append(f"data.options.channels={in_channels}")
            cfg.data.options = {**cfg.data.options, "channels": in_channels}
        from relssl.config import load_data

        splits = load_data(cfg)
    if splits.info.channels != in_channels:
        fix = (f"set data.options.channels={in_channels}" if takes_channels
               else f"embed images with {in_channels} channel(s)")
        raise DataError(f"{cfg.data.dataset}: the images have {splits.info.channels} channel(s) but the checkpoint's "
                        f"backbone takes {in_channels}; {fix}")
    pool = _trained_maxpool(cfg.backbone.maxpool, trained)
    if pool is not None and splits.info.maxpool != pool:  # the run's architecture, whatever the images' default
        splits = replace(splits, info=replace(splits.info, maxpool=pool))
    setup = prepare(ckpt_path, overrides, splits=splits, device=device, backbone=backbone)
    emb = embed_split(setup, split, head=head, normalize=normalize, batch_size=batch_size,
                      subsets=subsets_from_overrides(overrides) if subsets is None else subsets, log=log)
    emb.meta["notes"] = _data_notes(setup, trained)
    return emb


# ------------------------------------------------------------------------------------ writing


def check_output(path: str | Path) -> Path:
    """``path`` if its suffix is a known format and its directory can be written (or created)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"output {p} is a directory; give a file name ending in {', '.join(SUFFIXES)}")
    if p.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"output {p}: unknown format {p.suffix or '(no suffix)'!r}; allowed suffixes: "
                          f"{', '.join(SUFFIXES)}")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {p}: {parent} is not a directory; choose a writable -o path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {p}: directory {parent} is not writable; choose a writable -o path")
    return p


def _meta(emb: Embeddings) -> dict:
    return {**emb.meta, "columns": _columns(emb)[:-1]}


def _columns(emb: Embeddings) -> list[str]:
    cols = ["index", "split"] + (["path"] if emb.paths is not None else [])
    return cols + (["label"] if emb.labels is not None else []) + ["embedding"]


def _write_npz(f, emb: Embeddings) -> None:
    arrays = {"embeddings": emb.embeddings.numpy().astype(np.float32, copy=False),
              "index": emb.index.numpy().astype(np.int64, copy=False),
              "split": np.array(emb.split, dtype=str)}
    if emb.labels is not None:
        arrays["labels"] = emb.labels.numpy().astype(np.int64, copy=False)
    if emb.paths is not None:
        arrays["paths"] = np.array(emb.paths, dtype=str)
    arrays["meta"] = np.array(json.dumps(_meta(emb)))
    np.savez(f, **arrays)


def _write_safetensors(f, emb: Embeddings) -> None:
    from safetensors.torch import save

    names = list(dict.fromkeys(emb.split))
    code = {n: i for i, n in enumerate(names)}
    tensors = {"embeddings": emb.embeddings.float().contiguous(), "index": emb.index.long().contiguous(),
               "split": torch.tensor([code[s] for s in emb.split], dtype=torch.long)}
    if emb.labels is not None:
        tensors["labels"] = emb.labels.long().contiguous()
    meta = {**_meta(emb), "split_names": names}
    if emb.paths is not None:
        text = json.dumps(emb.paths)
        if len(text) <= MAX_HEADER_PATH_CHARS:
            meta["paths"] = emb.paths
        else:
            meta["paths"], meta["columns"] = False, [c for c in meta["columns"] if c != "path"]
            meta["notes"] = list(meta.get("notes", [])) + ["paths left out: too long for a safetensors header; "
                                                           "write .npz or .csv for them"]
    f.write(save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))


def _write_csv(f, emb: Embeddings) -> None:
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    w = csv.writer(text)
    w.writerow(_columns(emb)[:-1] + [f"e{j}" for j in range(emb.dim)])
    values = np.char.mod("%.9g", emb.embeddings.numpy())  # float32 round-trips with 9 significant digits
    index = emb.index.tolist()
    labels = emb.labels.tolist() if emb.labels is not None else None
    for i in range(len(emb)):
        row = [index[i], emb.split[i]]
        if emb.paths is not None:
            row.append(emb.paths[i])
        if labels is not None:
            row.append(labels[i])
        w.writerow(row + values[i].tolist())
    text.flush()
    text.detach()


WRITERS = {".npz": _write_npz, ".safetensors": _write_safetensors, ".csv": _write_csv}


def write_embeddings(path: str | Path, emb: Embeddings) -> Path:
    """Write ``emb`` to ``path`` in the format of its suffix (.npz, .safetensors, .csv), atomically:
    a temporary file beside it, renamed over ``path`` once complete."""
    p = check_output(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            WRITERS[p.suffix.lower()](f, emb)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as err:
        raise ConfigError(f"cannot write {p}: {err.strerror or err}; choose a writable -o path") from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
