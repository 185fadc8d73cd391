"""Dataclasses as config schemas: build one from a mapping, rejecting unknown keys and checking
every value against its annotation (``int``, ``float``, ``bool``, ``str``, unions with ``None``,
tuples, lists, mappings, nested dataclasses), then running the dataclass's own ``validate()``.

It sits below ``relssl.config`` and ``relssl.methods`` (both describe their options as
dataclasses), so neither needs the other to check a section. Every error is one
:class:`~relssl.errors.ConfigError` line naming the key, what it got and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from relssl.errors import ConfigError

__all__ = ["build_dataclass", "unknown_key_error", "check_value"]


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def check_value(key: str, value: Any, tp: Any) -> Any:
    """Check (and mildly coerce: int -> float, list -> tuple) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        allowed = " or ".join("null" if a is type(None) else type_name(a) for a in args)
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
            return tuple(check_value(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return tuple(check_value(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return [check_value(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    return value


def unknown_key_error(prefix: str, key: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"{prefix}.{key}" if prefix else key
    return ConfigError(f"unknown config key {where!r}{hint}; allowed: {', '.join(allowed)}")


def build_dataclass(cls: type, values: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and checking types and ranges."""
    if values is None:
        values = {}
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = dataclasses.asdict(values)
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise unknown_key_error(prefix, str(key), names)
        kwargs[key] = check_value(f"{prefix}.{key}" if prefix else key, value, hints[key])
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj
