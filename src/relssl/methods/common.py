"""What every method shares: the per-step context it receives and the Config checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relssl.errors import ConfigError


@dataclass
class StepInfo:
    """Context of one training step, handed to a method by the engine.

    ``index`` are the dataset indices of the batch (stored beside queue entries for diagnostics;
    NNCLR's ``exclude_self`` also searches with them), ``labels`` the class labels when the dataset
    has them (monitoring only: no method trains on them, except under the label-oracle control
    ``plugins: [mask_false_negatives]``, see ``relssl.methods.oracle``), ``step`` the global
    optimizer step, ``progress`` = step / total steps in [0, 1], and ``generator`` the seeded random
    source of this step (shuffle-BN permutations and the like). ``diagnose``: the engine asks for
    false-negative diagnostics this step (a method may then return them under ``out["_diag"]``, see
    ``relssl.methods.diagnose``). ``after_optimizer_step`` gets only ``step`` (already advanced past
    the optimizer step) and ``progress``.
    """

    step: int
    progress: float
    index: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    generator: torch.Generator | None = None
    diagnose: bool = False


def check_positive(name: str, value: float, prefix: str = "method") -> None:
    if not value > 0:
        raise ConfigError(f"{prefix}.{name} must be > 0, got {value}")


def check_momentum(name: str, value: float, prefix: str = "method") -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{prefix}.{name} must be in [0, 1], got {value}")


def check_choice(name: str, value: str, allowed: tuple[str, ...], prefix: str = "method") -> None:
    if value not in allowed:
        raise ConfigError(f"{prefix}.{name} must be one of {', '.join(allowed)}; got {value!r}")
