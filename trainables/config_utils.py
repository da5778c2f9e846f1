"""Building nested config dataclasses from plain mappings (YAML, Ray trial configs) with errors that name the field."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from trainables.errors import ConfigError

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from `data`, recursing into dataclass-typed fields.

    `where` is the dotted path used in error messages ("train.optim").
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and (isinstance(value, dict) or value is None):
            value = from_mapping(hint, value, f"{where}.{name}")
        else:
            inner = _optional_dataclass(hint)
            if inner is not None and isinstance(value, dict):
                value = from_mapping(inner, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a wrong type deep inside a constructor
        raise ConfigError(f"{where}: {e}") from None


def _optional_dataclass(hint: Any) -> type | None:
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def to_mapping(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
