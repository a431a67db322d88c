"""An nftables table of a fixed shape, as data: its text, and its elements and shape read back. Pure.

warmvm's tables (firewall.py: the guests' anti-spoofing, a `bridge` table;
hostfilter.py: what guests reach of the host, an `inet` table) are each a
fixed set of named sets and chains whose rules never change with the VMs;
only the sets' elements do. `TableDef` renders such a table with given
elements, and reads `nft -j list table` back into the elements of each set
and the table's `shape` (its sets, chains and rules by their comments), so
a table that was altered, or written by an older warmvm, reads as a shape
other than `TableDef.shape` and is replaced whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TABLE_PREFIX = "warmvm-"
_VERSION = "wv1"  # in every rule's comment: a table written by an older ruleset is replaced
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+@-]{1,15}$")  # a device name that can be written in nft text


def table_name(instance: str) -> str:
    """Our tables' name, the same in each family: the instance's."""
    return f"{TABLE_PREFIX}{instance}"


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[tuple[str, str], ...]  # (nft text, what it is for: the comment that names it)
    hook: str | None = None  # a base chain's hook; None: a regular chain, reached by jumps
    type: str = "filter"
    priority: int = 0


@dataclass(frozen=True)
class TableDef:
    family: str
    sets: tuple[tuple[str, str], ...]  # (name, type)
    chains: tuple[Chain, ...]

    @property
    def shape(self) -> tuple[str, ...]:
        """What a table written by `render` reads back as."""
        sets = [f"set {name} {kind}" for name, kind in self.sets]
        chains = [f"chain {c.name} {c.type} {c.hook} {c.priority} accept" if c.hook else f"chain {c.name}"
                  for c in self.chains]
        rules = [f"rule {c.name} {_comment(why)}" for c in self.chains for _, why in c.rules]
        return tuple(sorted(sets + chains)) + _by_chain(rules)

    def render(self, table: str, elements: Mapping[str, list[str]]) -> list[str]:
        """The lines that replace the table whole, inside a transaction (creating it first makes the
        delete safe when it does not exist yet)."""
        check_name(table)
        lines = [f"table {self.family} {table}", f"delete table {self.family} {table}",
                 f"table {self.family} {table} {{"]
        for name, kind in self.sets:
            listed = elements.get(name, [])
            body = f" elements = {{ {', '.join(listed)} }}" if listed else ""
            lines.append(f"  set {name} {{ type {kind};{body} }}")
        for c in self.chains:
            lines.append(f"  chain {c.name} {{")
            if c.hook:
                lines.append(f"    type {c.type} hook {c.hook} priority {c.priority}; policy accept;")
            lines += [f'    {text} comment "{_comment(why)}"' for text, why in c.rules]
            lines.append("  }")
        lines.append("}")
        return lines

    def read(self, text: str) -> tuple[dict[str, list[Any]], tuple[str, ...]]:
        """`nft -j list table` -> (each set's elements as JSON values, the table's shape).
        ValueError for output of another form."""
        try:
            return _read(text)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"unexpected nft JSON ({e!r})") from None


def _comment(why: str) -> str:
    return f"{_VERSION}: {why}"


def _by_chain(rules: list[str]) -> tuple[str, ...]:
    """Rules in order within each chain, the chains in name order (nft lists them in creation order)."""
    return tuple(sorted(rules, key=lambda rule: rule.split(" ", 2)[1]))


def _read(text: str) -> tuple[dict[str, list[Any]], tuple[str, ...]]:
    elements: dict[str, list[Any]] = {}
    shape: list[str] = []
    rules: list[str] = []
    for item in items(text):
        if "set" in item:
            s = item["set"]
            kind = s["type"] if isinstance(s["type"], str) else " . ".join(s["type"])
            shape.append(f"set {s['name']} {kind}")
            elements[s["name"]] = list(s.get("elem", []))
        elif "chain" in item:
            c = item["chain"]
            base = f" {c.get('type')} {c.get('hook')} {c.get('prio')} {c.get('policy')}" if "hook" in c else ""
            shape.append(f"chain {c['name']}{base}")
        elif "rule" in item:
            rules.append(f"rule {item['rule']['chain']} {item['rule'].get('comment')}")
    return elements, tuple(sorted(shape)) + _by_chain(rules)


def parse_tables(text: str) -> frozenset[tuple[str, str]]:
    """(family, name) of each table `nft -j list tables` lists; ValueError for output of another form."""
    try:
        return frozenset((str(item["table"]["family"]), str(item["table"]["name"]))
                         for item in items(text) if "table" in item)
    except (KeyError, TypeError) as e:
        raise ValueError(f"unexpected nft JSON ({e!r})") from None


def items(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
        listed = data["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"nft printed no JSON ruleset ({e})") from None
    return [item for item in listed if isinstance(item, dict)]


def check_name(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"{name!r} cannot be named in an nft rule (letters, digits and _.+@- only)")


def text(element: Any) -> str:
    """A set element that should be a name; anything else as its JSON, which matches no name: drift."""
    return element if isinstance(element, str) else json.dumps(element)


def concat(element: Any, size: int) -> tuple[Any, ...] | None:
    """The parts of a concatenated element; None for anything else (not ours: drift)."""
    if isinstance(element, dict) and isinstance(element.get("concat"), list) and len(element["concat"]) == size:
        return tuple(element["concat"])
    return None


def few(items: list[str], keep: int = 3) -> str:
    return ",".join(items) if len(items) <= keep + 1 else f"{','.join(items[:keep])},...(+{len(items) - keep})"
