"""Typed records from untyped data (a composed Hydra config, a JSON file): one set of type rules.

:func:`read` builds a dataclass from a mapping. Each field's value must match its annotation:
``int``, ``float`` (an int is accepted and converted), ``bool``, ``str``, ``list[T]``,
``dict[...]``, a nested dataclass (read the same way), ``Any``, or ``T | None``. Field metadata
adds what a type cannot say (build it with :func:`rule`):

- ``min``: the smallest allowed integer;
- ``check``: ``(predicate, allowed)``, a rule on the (converted) value and its wording;
- ``parse``: a function that converts and checks the raw value itself (its errors pass through);
- ``nullable``: False refuses null for a ``T | None`` field (None then only means "absent");
- ``since``: the first version that always has the key (with ``read(..., version=v)``: an older
  file may lack it and gets the field's default).

A missing key or a wrong value raises :class:`FieldError` with the dotted name, the value and
the allowed values; each command words it for its users (``str(error)`` is the config wording).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Mapping, TypeVar

__all__ = ["FieldError", "read", "rule", "describe"]

T = TypeVar("T")
_MISSING = object()


class FieldError(ValueError):
    """A key that is missing or whose value is not allowed (one line naming it)."""

    def __init__(self, name: str, value: Any, problem: str, allowed: str):
        self.name, self.value, self.problem, self.allowed = name, value, problem, allowed
        got = "missing" if value is _MISSING else f"{value!r} {problem}"
        super().__init__(f"{name}: {got}; allowed values: {allowed}")

    @property
    def missing(self) -> bool:
        """Whether the key is absent (rather than its value wrong)."""
        return self.value is _MISSING


def rule(*, min: int | None = None, check: tuple[Callable[[Any], bool], str] | None = None,
         parse: Callable[[Any], Any] | None = None, nullable: bool = True, since: int | None = None,
         default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with the metadata :func:`read` applies (see the module docstring)."""
    meta = {"min": min, "check": check, "parse": parse, "nullable": nullable, "since": since}
    return dataclasses.field(default=default, metadata=meta)


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {hint!r}: only T | None")
        return args[0], True
    return hint, False


def describe(hint: Any, low: int | None = None) -> tuple[str, str]:
    """``(problem, allowed values)`` of a value that does not match ``hint``, e.g.
    ``("is not an integer", "integers >= 1")``."""
    hint, nullable = _optional(hint)
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        problem, allowed = "is not a boolean", "true, false"
    elif hint is int:
        problem, allowed = "is not an integer", "integers" + ("" if low is None else f" >= {low}")
    elif hint is float:
        problem, allowed = "is not a number", "numbers (e.g. 0.5)"
    elif hint is str:
        problem, allowed = "is not a string", "strings"
    elif origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        problem, allowed = "is not a list", "lists" + ("" if item is Any else f" of {describe(item)[1]}")
    elif dataclasses.is_dataclass(hint):
        problem, allowed = "is not a mapping", f"mappings of {', '.join(f.name for f in dataclasses.fields(hint))}"
    elif origin is dict:
        problem, allowed = "is not a mapping", "mappings"
    else:
        problem, allowed = "is not allowed", "anything"
    return problem, allowed + (" or null" if nullable else "")


class _Mismatch(Exception):
    """A value of another type than its field's (read() words it)."""


def _conform(value: Any, hint: Any, name: str, version: int | None) -> Any:
    """``value`` as the non-null type ``hint`` (ints as floats, dataclasses read), else _Mismatch."""
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        (item,) = typing.get_args(hint) or (Any,)
        item, nullable = _optional(item)
        return [None if v is None and nullable else _conform(v, item, name, version) for v in value]
    elif dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return read(hint, value, name, version=version)
    elif origin is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    else:
        raise TypeError(f"{name}: unsupported annotation {hint!r}")
    if not ok:
        raise _Mismatch
    return value


def read(cls: type[T], data: Mapping[str, Any], prefix: str = "", *, version: int | None = None) -> T:
    """An instance of the dataclass ``cls`` from ``data`` (keys = field names; others ignored).

    ``prefix``: the dotted name of ``data`` in its file, for messages. ``version``: the version of
    the file, for fields with ``since``. Raises FieldError (or what a ``parse`` raises); ValueError
    from ``cls``'s own ``__post_init__`` passes through.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{prefix}.{f.name}" if prefix else f.name
        meta = f.metadata
        base, nullable = _optional(hints[f.name])
        nullable = nullable and meta.get("nullable", True)
        low = meta.get("min")
        problem, allowed = describe(base, low)
        allowed += " or null" if nullable else ""
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if f.name not in data:
            since = meta.get("since")
            if has_default and (since is None or version is None or version < since):
                continue
            raise FieldError(name, _MISSING, problem, allowed)
        value = data[f.name]
        if meta.get("parse") is not None:
            values[f.name] = meta["parse"](value)
            continue
        if value is None:
            if not nullable:
                raise FieldError(name, value, problem, allowed)
            values[f.name] = None
            continue
        try:
            value = _conform(value, base, name, version)
        except _Mismatch:
            raise FieldError(name, value, problem, allowed) from None
        if low is not None and value < low:
            raise FieldError(name, value, "is too small", allowed)
        check = meta.get("check")
        if check is not None and not check[0](value):
            raise FieldError(name, value, "not allowed", check[1])
        values[f.name] = value
    return cls(**values)
