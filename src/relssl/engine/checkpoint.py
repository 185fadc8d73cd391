"""Checkpoint files: written atomically, read without unpickling arbitrary objects.

Writing goes to ``<name>.tmp`` in the same directory, is flushed and fsync'ed, then renamed over
the target, and the directory is fsync'ed: a crash at any point leaves either the old file or the
new one, never a half-written checkpoint. Reading uses ``torch.load(weights_only=True)``; a
truncated, corrupt or foreign file gives a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from relssl.errors import CheckpointError, TrainingError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:  # never leave a partial file behind: on a full disk it would keep the disk full
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        # a full disk or quota reaches us as OSError from open/fsync, or as torch's RuntimeError
        # ("PytorchStreamWriter failed writing file ...") from inside torch.save
        if isinstance(err, (OSError, RuntimeError)):
            reason = (getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:160]
                      if str(err).strip() else type(err).__name__)
            raise CheckpointError(
                f"cannot write checkpoint {path}: {reason}; free disk space or choose a writable "
                "output_dir (the previous checkpoint is kept)"
            ) from err
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is atomic


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt files
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a relssl checkpoint ({first})"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no 'state_dict': not a relssl checkpoint")
    return ckpt


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or an infinity.

    One device-to-host read for the whole state dict (the common, all-finite case); the names are
    looked up only when something is wrong."""
    floats = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not floats:
        return []
    device = next(iter(floats.values())).device
    finite = torch.stack([torch.isfinite(v).all().to(device) for v in floats.values()])
    if bool(finite.all()):
        return []
    flags = finite.cpu().tolist()
    return sorted(k for k, ok in zip(floats, flags) if not ok)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic writes and weights-only reads."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict") or {})
        if bad:  # the last line of defence: a checkpoint is always a point a run can continue from
            raise TrainingError(f"refusing to write checkpoint {path}: {len(bad)} non-finite tensors (e.g. {bad[0]}); "
                                "the previous checkpoint is kept; lower optim.lr or set trainer.nan_policy=skip")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint_file(path, map_location if map_location is not None else "cpu")
