"""The file format of ``relssl export``: its name, version and metadata reader.

Here rather than in :mod:`relssl.evaluate.export` so that :mod:`relssl.evaluate.checkpoint` can read
an exported file's metadata (to evaluate the file alone) without an import cycle.
"""

from __future__ import annotations

import json
from pathlib import Path

from relssl.errors import CheckpointError

FORMAT = "relssl-backbone"
FORMAT_VERSION = "1"


def read_metadata(path: str | Path) -> dict:
    """The metadata of an exported backbone (values decoded from JSON)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported backbone {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path} is not a safetensors file ({str(err).splitlines()[0][:120]})") from err
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by relssl export (no '{FORMAT}' metadata); "
                              "load it with safetensors.torch.load_file into the architecture it came from")
    return meta
