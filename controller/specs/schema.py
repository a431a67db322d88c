"""Spec schemas: what one object's spec may say, and the checks on single values.

Each kind is a table of fields (the key as written, how its value is parsed,
its default) turned into a typed, frozen spec; a misspelt field is an error,
not a silent default, and every problem in a document is reported, not just
the first. Parsers raise ValueError with the text of a FILE:LINE: FIELD:
error. Checks across objects live in load.py.

Written out rather than declared with pydantic: the schema is small, and
building pydantic's models cost two thirds of every command's start-up.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Generic, TypeVar

from ..base.kinds import Transport
from ..base.model import IFNAMSIZ, HostPort

API_VERSION = "warmvm/v1"
BRIDGE_MAX_PORTS = 1023
MIN_INDEX_DIGITS = 4  # room for any pool index up to BRIDGE_MAX_PORTS
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_QUANTITY = re.compile(r"^\s*(\d+)\s*([KMGT]i)?\s*$")
MAX_QUANTITY = 64 << 40
MIN_MEMORY, MAX_MEMORY = 64 << 20, 1 << 40

Parse = Callable[[Any], Any]  # a value as loaded from YAML -> its typed value; ValueError(why) if invalid
FieldPath = tuple[str | int, ...]


# --- value parsers -----------------------------------------------------------------

def parse_quantity(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as 512Mi or 4Gi")
    if isinstance(value, int):
        number, unit = value, ""
    elif isinstance(value, str) and (m := _QUANTITY.match(value)):
        number, unit = int(m.group(1)), m.group(2) or ""
    else:
        raise ValueError(f"{value!r} is not a quantity: use a whole number with Ki, Mi, Gi or Ti (e.g. 4Gi)")
    size = number * _UNITS[unit]
    if size <= 0:
        raise ValueError("must be greater than zero")
    if size > MAX_QUANTITY:
        raise ValueError(f"{value} is absurdly large (at most 64Ti)")
    return size


_DURATION = re.compile(r"^(\d+)(s|m|h)?$")


def seconds(value: Any) -> float:
    """A duration: whole seconds, or with s, m or h (90s, 2m)."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    m = _DURATION.match(text)
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a duration: a positive whole number of s, m or h (e.g. 90s)")
    return float(int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"])


def integer(ge: int, le: int) -> Parse:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("Input should be a valid integer")
        if value < ge:
            raise ValueError(f"Input should be greater than or equal to {ge}")
        if value > le:
            raise ValueError(f"Input should be less than or equal to {le}")
        return value
    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("Input should be a valid boolean (true or false)")
    return value


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("Input should be a valid string")
    return value


def one_of(*choices: str) -> Parse:
    shown = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"

    def parse(value: Any) -> str:
        if value not in choices or not isinstance(value, str):
            raise ValueError(f"Input should be {shown}")
        return value
    return parse


def optional(parse: Parse) -> Parse:
    return lambda value: None if value is None else parse(value)


def check_ifname(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an interface name")
    if len(value.encode()) > IFNAMSIZ:
        raise ValueError(f"{value!r} is longer than {IFNAMSIZ} bytes")
    if value in (".", "..") or any(c in value for c in "/:") or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a valid interface name (no '/', ':' or whitespace)")
    return value


_PREFIX_CHARS = re.compile(r"^[A-Za-z0-9_.+@-]+$")


def check_prefix(value: Any) -> str:
    check_ifname(value)
    if not _PREFIX_CHARS.match(value):  # TAP names are written into the guests' nftables rules
        raise ValueError(f"{value!r} may hold only letters, digits and '_', '.', '+', '@', '-'")
    room = IFNAMSIZ - len(value.encode())
    if room < MIN_INDEX_DIGITS:
        raise ValueError(f"{value!r} leaves {room} characters for the index; at least {MIN_INDEX_DIGITS} needed")
    return str(value)


LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$")


def labels(value: Any) -> dict[str, str]:
    """A host's labels, or a selector of them: a mapping of short names to short values."""
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of label names to values")
    out: dict[str, str] = {}
    for key, item in value.items():
        text = str(item) if isinstance(item, str | int) and not isinstance(item, bool) else None
        if not isinstance(key, str) or not LABEL.match(key) or text is None or not LABEL.match(text):
            raise ValueError(f"{key!r}: {item!r}: label names and values are letters, digits, '-', '_', '.' "
                             "or '/', at most 63, starting and ending with a letter or digit")
        out[key] = text
    return out


def check_cidr(value: Any) -> IPv4Network:
    try:
        net = IPv4Network(value, strict=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{value!r} is not an IPv4 network ({e})") from None
    if net.num_addresses < 4:
        raise ValueError(f"{value} is too small for a gateway and VMs")
    return net


def check_ip(value: Any) -> IPv4Address:
    try:
        return IPv4Address(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not an IPv4 address") from None


_PORT = re.compile(r"^(\d{1,5})(?:/([a-z]+))?$")


def host_port(value: Any) -> HostPort:
    """A port and its protocol, `53/udp`, or a bare number for TCP."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    m = _PORT.match(text)
    if m is None:
        raise ValueError(f"{value!r} is not a port: a number, optionally with /tcp or /udp (e.g. 3128, 53/udp)")
    port, protocol = int(m.group(1)), m.group(2) or Transport.TCP
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1..65535")
    if protocol not in tuple(Transport):
        raise ValueError(f"{value!r}: the protocol is tcp or udp, not {protocol!r}")
    return HostPort(Transport(protocol), port)


# --- the schema machinery ----------------------------------------------------------------

T = TypeVar("T")
_REQUIRED: Any = object()


@dataclass(frozen=True)
class Field:
    key: str  # as written in the spec
    parse: Parse | Schema[Any] | Items
    default: Any = _REQUIRED


@dataclass(frozen=True)
class Items:
    """A list, each item read by `parse`: every bad item is an error of its own, at its index."""

    parse: Parse

    def validate(self, data: Any, at: FieldPath, errors: list[tuple[FieldPath, str]]) -> tuple[Any, ...] | None:
        if not isinstance(data, list):
            errors.append((at, "must be a list"))
            return None
        before, out = len(errors), []
        for index, item in enumerate(data):
            try:
                value = self.parse(item)
            except ValueError as e:
                errors.append((at + (index,), str(e)))
                continue
            if value in out:
                errors.append((at + (index,), f"{value} is listed twice"))
            out.append(value)
        return None if len(errors) > before else tuple(out)


@dataclass(frozen=True)
class Schema(Generic[T]):
    """A mapping with exactly these fields -> a `build(**values)`, keyed by each field's `key`."""

    build: Callable[..., T]
    fields: tuple[Field, ...]
    before: Parse | None = None  # turns the raw value into the mapping (or a final value) first

    def validate(self, data: Any, at: FieldPath, errors: list[tuple[FieldPath, str]]) -> T | None:
        """The typed value, or None with every problem appended to `errors` as (path, message)."""
        if self.before is not None:
            try:
                data = self.before(data)
            except ValueError as e:
                errors.append((at, str(e)))
                return None
            if not isinstance(data, dict):
                return data  # type: ignore[no-any-return]  # `before` gave the final value (e.g. none)
        if not isinstance(data, dict):
            errors.append((at, "must be a mapping"))
            return None
        known = [f.key for f in self.fields]
        failed = False
        for key in data:
            if key not in known:
                errors.append((at + (str(key),), "unknown field" + suggest(str(key), known)))
                failed = True
        values: dict[str, Any] = {}
        for f in self.fields:
            if f.key not in data:
                if f.default is _REQUIRED:
                    errors.append((at + (f.key,), "required field is missing"))
                    failed = True
                values[f.key] = f.default
                continue
            value = self._field(f, data[f.key], at + (f.key,), errors)
            failed = failed or value is _INVALID
            values[f.key] = value
        return None if failed else self.build(**values)

    @staticmethod
    def _field(f: Field, value: Any, at: FieldPath, errors: list[tuple[FieldPath, str]]) -> Any:
        if isinstance(f.parse, Schema | Items):
            before = len(errors)
            parsed = f.parse.validate(value, at, errors)
            return _INVALID if len(errors) > before else parsed
        try:
            return f.parse(value)
        except ValueError as e:
            errors.append((at, str(e)))
            return _INVALID


_INVALID: Any = object()


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
