"""Building nested config dataclasses from plain mappings (YAML, Ray trial configs) with errors that name the field."""
from __future__ import annotations

import dataclasses
import numbers
import types
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
            elif hint is not None:
                check_type(value, hint, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a wrong type deep inside a constructor
        raise ConfigError(f"{where}: {e}") from None


def check_type(value: Any, hint: Any, path: str) -> None:
    """Raise ConfigError "<path> must be <what hint allows>, got <value>" unless `value` fits the annotation.

    Understands int, float (an int is accepted), bool, str, Any, None, Optional/Union, Literal, list[X],
    tuple[X, ...] / tuple[X, Y] (a list or tuple), dict[K, V] and dataclasses (an instance or a mapping).
    """
    if not _fits(value, hint):
        raise ConfigError(f"{path} must be {_describe(hint)}, got {value!r}")


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is getattr(types, "UnionType", None)


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (hint, dict))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            return False
        key, val = args if args else (Any, Any)
        return all(_fits(k, key) and _fits(v, val) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not know: leave it to the class


def _describe(hint: Any) -> str:
    if hint is Any:
        return "anything"
    if hint is None or hint is type(None):
        return "null"
    simple = {bool: "true or false", int: "an int", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        if set(args) == {int, float}:
            return "a number"
        kinds = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(kinds))
        return f"{text} or null" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is tuple:
        if args and not (len(args) == 2 and args[1] is Ellipsis) and len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping with string keys" if args and args[0] is str else "a mapping"
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    return {bool: "booleans", int: "ints", float: "numbers", str: "strings"}.get(hint, _describe(hint))


def _optional_dataclass(hint: Any) -> type | None:
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def to_mapping(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
