"""The one serializer of every record warmvm stores (vm.json, disk.json, a snapshot's record,
the seed record, the daemon's status, the host's facts).

A record is a frozen dataclass; on disk it is a JSON object of its fields, enums as their
strings. Reading one keeps the fields it knows (an older warmvm's record lacks some, a newer
one's has more), checks each value against the field's type, and says in one line which file
is not such a record: records are written atomically, so one that does not read is damage,
never a half-written file.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from functools import cache
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, TypeVar

from .errors import PermanentError

R = TypeVar("R")


def to_dict(record: object) -> dict[str, Any]:
    """The record as a JSON object: enums as their strings, paths as strings."""
    return {f.name: _plain(getattr(record, f.name)) for f in dataclasses.fields(record)}  # type: ignore[arg-type]


def from_dict(cls: type[R], data: dict[str, Any], where: str) -> R:
    """The record of type `cls` in `data`; PermanentError naming `where` if it is not one."""
    kinds = _field_types(cls)  # type: ignore[arg-type]  # a dataclass type is hashable
    values: dict[str, Any] = {}
    try:
        for name, kind in kinds.items():
            if name in data:
                values[name] = _coerce(data[name], kind, name)
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise PermanentError(f"{where}: not a {_label(cls)} record ({e})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(value: Any, kind: Any, name: str) -> Any:
    options = typing.get_args(kind) if isinstance(kind, UnionType) or typing.get_origin(kind) is typing.Union \
        else (kind,)
    if value is None:
        if NoneType in options:
            return None
        raise ValueError(f"{name}: null")
    for option in options:
        if option is NoneType:
            continue
        if isinstance(option, type) and issubclass(option, Enum):
            return option(value)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool, dict) and isinstance(value, option):
            return value
        if typing.get_origin(option) in (dict, list) and isinstance(value, typing.get_origin(option)):
            return value
    raise ValueError(f"{name}: {value!r} is not {kind}")


def _label(cls: type) -> str:
    """`VmRecord` -> `VM`, `SnapshotRecord` -> `snapshot`: how errors have always named them."""
    return getattr(cls, "LABEL", cls.__name__)
