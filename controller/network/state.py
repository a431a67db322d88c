"""Observed network state: links, addresses and our nftables table -> what the planner needs. Pure.

The dump that produces Link and Address records is in rtnl.py, the reading
in observe.py. Splits devices into bridges (ours or not), warmvm-owned TAPs
with their roles, and the set of every name in use, which is all the TAP
name allocator needs; and holds what our containment tables contain
(firewall.py, hostfilter.py), when they were read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..adapters.netlink.messages import Address, Link
from ..base.kinds import Role
from ..base.model import Lease
from .firewall import Ruleset
from .hostfilter import HostRules
from .marks import Mark, parse_mark


@dataclass(frozen=True)
class BridgeState:
    name: str
    index: int
    owner: str | None  # the network of this instance that created it; None: not ours
    up: bool
    addresses: frozenset[str]
    ports: int
    legacy: str | None = None  # the network named by a mark from before instances were named


@dataclass(frozen=True)
class TapState:
    name: str
    index: int
    mark: Mark
    master: int | None
    up: bool
    isolated: bool = False

    @property
    def idle(self) -> bool:
        return self.mark.role == Role.POOL


@dataclass(frozen=True)
class FirewallState:
    """Our nftables tables (`bridge warmvm-INSTANCE`, `inet warmvm-INSTANCE`) as observed."""

    table: str  # their name
    present: bool  # either of them exists
    rules: Ruleset | None  # the bridge table's; None: absent, or not read (nothing of ours needed it)
    error: str | None = None  # nft could not be asked: why, in one line (the rest unknown)
    host: HostRules | None = None  # the inet table's; None: absent, or not read
    forwarding: bool | None = None  # net.ipv4.ip_forward; None: not read


@dataclass(frozen=True)
class NetState:
    bridges: dict[str, BridgeState]  # every bridge-named device, keyed by name
    taps: tuple[TapState, ...]  # this instance's TAPs only
    names: frozenset[str]  # every device name in the namespace
    legacy: tuple[TapState, ...] = ()  # TAPs marked before instances were named: adoptable
    instance: str | None = None  # whose view this is
    firewall: FirewallState | None = None  # None: not observed (no instance yet): containment is not planned

    def idle_taps(self, network: str) -> list[TapState]:
        return sorted((t for t in self.taps if t.idle and t.mark.network == network), key=_index_order)

    def vm_taps(self) -> dict[str, TapState]:
        return {t.mark.vm: t for t in self.taps if t.mark.vm}


def net_state(links: Iterable[Link], addresses: Iterable[Address], instance: str | None) -> NetState:
    """`instance`: this state directory's identity; devices marked by another are foreign."""
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
    legacy: list[TapState] = []
    for link in links:
        mark = parse_mark(link.alias)
        ours = mark is not None and instance is not None and mark.instance == instance
        if link.kind == "bridge" or (mark and mark.role == Role.BRIDGE):
            marked = mark is not None and mark.role == Role.BRIDGE and link.kind == "bridge"
            bridges[link.name] = BridgeState(
                link.name, link.index, mark.network if marked and ours and mark else None, link.up,
                frozenset(addrs.get(link.index, ())), ports.get(link.index, 0),
                legacy=mark.network if marked and mark and mark.instance is None else None)
        elif mark and link.kind == "tun" and mark.role in (Role.POOL, Role.VM):
            tap = TapState(link.name, link.index, mark, link.master, link.up, link.isolated)
            if ours:
                taps.append(tap)
            elif mark.instance is None:
                legacy.append(tap)
    return NetState(bridges, tuple(taps), frozenset(l.name for l in links), tuple(legacy), instance)


def _index_order(tap: TapState) -> tuple[int, str]:
    digits = "".join(c for c in reversed(tap.name) if c.isdigit())[::-1]
    return (int(digits) if digits else -1, tap.name)


class NetworkView(Protocol):
    """What the network planner and driver read of a pass's observation."""

    @property
    def net(self) -> NetState: ...
    @property
    def leases(self) -> Mapping[str, Lease]: ...  # each VM's IP lease and MAC, from its record
    @property
    def running(self) -> frozenset[str]: ...  # VMs whose QEMU is alive
    @property
    def broken_vms(self) -> frozenset[str]: ...  # VMs whose records cannot be read
