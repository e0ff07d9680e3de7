"""TOML tables into config dataclasses (workspace/config.py's): each key checked against
its field's type, unknown keys named (every table's at once)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from workspace.errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    if unknown := _unknown_keys(cls, data, where):
        # Every table's at once: a file with two typos is not refused twice in turn.
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _unknown_keys(cls: type, data: dict[str, Any], where: str) -> list[str]:
    """The keys of table ``data``, its tables and arrays of tables, ``cls`` does not know."""
    hints, known = typing.get_type_hints(cls), {f.name for f in dataclasses.fields(cls)}
    out: list[str] = []
    for key, value in sorted(data.items()):
        name, tp = f"{where}.{key}" if where else key, hints.get(key) if key in known else None
        tables = [(value, name)] if isinstance(value, dict) else []
        if typing.get_origin(tp) is list and isinstance(value, list):
            (tp,) = typing.get_args(tp)
            tables = [(v, f"{name}[{i}]") for i, v in enumerate(value) if isinstance(v, dict)]
        if tp is None:
            out.append(name)
        elif dataclasses.is_dataclass(tp):
            out += [k for t, n in tables for k in _unknown_keys(tp, t, n)]  # type: ignore[arg-type]
    return out


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return {str(k): _text(v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        # TOML's inf and nan: no interval, ratio or weight here means either.
        raise ConfigError(f"{where}: expected a finite number, got {value}")
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    """A string value of a table of strings (``[labels]``) as it is written in TOML:
    ``true`` is "true" (what ``--require gpu=true`` asks for), ``8`` is "8"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return str(value)
