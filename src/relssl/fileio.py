"""File writing shared by every layer (it imports nothing from relssl).

:func:`atomic_write_text` replaces a file in one step: the text goes to ``<name>.tmp`` beside it,
then a rename puts it in place, so a reader never sees half a file; on failure the temporary
file is removed (on a full disk it would keep the disk full) and the ``OSError`` propagates for
the caller to turn into its one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path


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
