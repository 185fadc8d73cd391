"""Files shared by every layer (it imports nothing from relssl but its errors).

:func:`atomic_write_text` replaces a file in one step: the text goes to ``<name>.tmp`` beside it,
then a rename puts it in place, so a reader never sees half a file; on failure the temporary
file is removed (on a full disk it would keep the disk full) and the ``OSError`` propagates for
the caller to turn into its one-line error.

:func:`resolve_checkpoint` and :func:`resume_paths` find a run's checkpoint from what a user
typed. They need neither torch nor Lightning, so the command line checks a path with them
before it imports the engine (seconds on a small CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

from relssl.errors import CheckpointError, ConfigError


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file, or a run directory's ``checkpoints/last.ckpt`` (else ``best.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("last.ckpt", "best.ckpt"):
            cand = path / "checkpoints" / name
            if cand.is_file():
                return cand
        raise CheckpointError(f"{path} holds no checkpoints/last.ckpt; pass a run directory of relssl pretrain or a .ckpt file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def resume_paths(resume: str | os.PathLike) -> tuple[Path, Path]:
    """(run directory, checkpoint) that ``--resume`` continues: a run directory's ``checkpoints/last.ckpt``
    or a checkpoint file inside a run directory; one line naming what is missing otherwise."""
    resume = Path(resume)
    if resume.is_file():
        ckpt_path, run_dir = resume, resume.parent.parent
    else:
        run_dir, ckpt_path = resume, resume / "checkpoints" / "last.ckpt"
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {resume}: no config.yaml in {run_dir}; pass a run directory made by relssl pretrain")
    if not ckpt_path.is_file():
        raise ConfigError(f"--resume {resume}: no checkpoint at {ckpt_path} (the run stopped before its first "
                          "checkpoint); start it again")
    return run_dir, ckpt_path
