"""Observed network state: links and addresses -> what the planner needs. Pure.

The dump that produces Link and Address records is in rtnl.py, the reading
in observe.py. Splits devices into bridges (ours or not), warmvm-owned TAPs
with their roles, and the set of every name in use, which is all the TAP
name allocator needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .marks import Mark, parse_mark


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # "tun", "bridge", ... (None for devices without link info, e.g. lo)
    alias: str | None
    master: int | None
    up: bool
    group: int


@dataclass(frozen=True)
class Address:
    index: int
    cidr: str  # "10.88.0.1/24"


@dataclass(frozen=True)
class BridgeState:
    name: str
    index: int
    owner: str | None  # the network that created it; None: foreign
    up: bool
    addresses: frozenset[str]
    ports: int


@dataclass(frozen=True)
class TapState:
    name: str
    index: int
    mark: Mark
    master: int | None
    up: bool

    @property
    def idle(self) -> bool:
        return self.mark.role == "pool"


@dataclass(frozen=True)
class NetState:
    bridges: dict[str, BridgeState]  # every bridge-named device, keyed by name
    taps: tuple[TapState, ...]  # warmvm's TAPs only
    names: frozenset[str]  # every device name in the namespace

    def idle_taps(self, network: str) -> list[TapState]:
        return sorted((t for t in self.taps if t.idle and t.mark.network == network), key=_index_order)

    def vm_taps(self) -> dict[str, TapState]:
        return {t.mark.vm: t for t in self.taps if t.mark.vm}


def net_state(links: Iterable[Link], addresses: Iterable[Address]) -> NetState:
    links = list(links)
    addrs: dict[int, set[str]] = {}
    for a in addresses:
        addrs.setdefault(a.index, set()).add(a.cidr)
    ports: dict[int, int] = {}
    for link in links:
        if link.master:
            ports[link.master] = ports.get(link.master, 0) + 1
    bridges: dict[str, BridgeState] = {}
    taps: list[TapState] = []
    for link in links:
        mark = parse_mark(link.alias)
        if link.kind == "bridge" or (mark and mark.role == "bridge"):
            owner = mark.network if mark and mark.role == "bridge" and link.kind == "bridge" else None
            bridges[link.name] = BridgeState(link.name, link.index, owner, link.up,
                                             frozenset(addrs.get(link.index, ())), ports.get(link.index, 0))
        elif mark and link.kind == "tun" and mark.role in ("pool", "vm"):
            taps.append(TapState(link.name, link.index, mark, link.master, link.up))
    return NetState(bridges, tuple(taps), frozenset(l.name for l in links))


def _index_order(tap: TapState) -> tuple[int, str]:
    digits = "".join(c for c in reversed(tap.name) if c.isdigit())[::-1]
    return (int(digits) if digits else -1, tap.name)
