"""The checks every method and plug-in ``Config.validate()`` uses: one-line ``ConfigError`` messages."""

from __future__ import annotations

from relssl.errors import ConfigError


def check_positive(name: str, value: float, prefix: str = "method") -> None:
    if not value > 0:
        raise ConfigError(f"{prefix}.{name} must be > 0, got {value}")


def check_momentum(name: str, value: float, prefix: str = "method") -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{prefix}.{name} must be in [0, 1], got {value}")


def check_choice(name: str, value: str, allowed: tuple[str, ...], prefix: str = "method") -> None:
    if value not in allowed:
        raise ConfigError(f"{prefix}.{name} must be one of {', '.join(allowed)}; got {value!r}")
