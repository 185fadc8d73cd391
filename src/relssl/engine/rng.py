"""The global random states a checkpoint keeps (torch, CUDA, NumPy, Python).

relssl's own randomness is seeded per step and needs none of them, but user code, custom methods
and libraries may draw from the global generators; restoring them keeps a resumed run on the same
path. They are stored as plain tensors and numbers, so the checkpoint loads with
``weights_only=True``.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    *py_state, version = state["python"]
    random.setstate((version, tuple(py_state), None))
