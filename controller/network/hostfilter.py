"""What guests reach of the host and beyond it, as data: warmvm's `inet` table and its text. Pure.

Linux delivers a packet addressed to any of the host's addresses whatever
interface it came in on, so a guest could reach every host service, also
those bound only to another interface's address. `inet warmvm-INSTANCE` is
therefore keyed by the bridge a packet comes in on (iifname in `bridges`,
every bridge of ours):

- input: replies to the host's own connections pass (the controller's SSH
  probe, `warmvm ssh`); so do the ports a network opens on its own gateway
  address (`hostPorts`: `allowed`, bridge . gateway . protocol . port);
  anything else from a guest to the host is dropped (ICMP too; ARP is not
  IP and is not seen here).
- forward: replies pass; a network with `egress: nat` (`egress`) may go out
  of the host's other interfaces, never into another of our bridges;
  anything else a guest sends to be forwarded is dropped.
- postrouting (nat): what a guest sends out of the host leaves with the
  host's address (masquerade).

Only the sets' elements change with the specs; `HostRules` is them plus the
table's `shape`, compared with what `parse_host_table` reads back (see
nfttable.py). Whatever the host's other tables do still applies: a drop in
any of them is final, so they can narrow this, never widen it.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from ..base.kinds import Transport
from ..base.model import HostPort
from .nfttable import Chain, TableDef, check_name, concat, few, text

HOST = TableDef("inet", (
    ("allowed", "ifname . ipv4_addr . inet_proto . inet_service"), ("bridges", "ifname"), ("egress", "ifname"),
    ("within", "ifname . ifname"),
), (
    Chain("input", (
        ("iifname @bridges ct state established,related accept", "replies to the host's own connections"),
        ("iifname . ip daddr . meta l4proto . th dport @allowed accept", "the ports a network opens on its gateway"),
        ("iifname @bridges drop", "nothing else of the host"),
    ), hook="input"),
    Chain("forward", (
        ("iifname @bridges ct state established,related accept", "replies to connections made to guests"),
        ("iifname @egress oifname != @bridges accept", "egress out of the host's other interfaces"),
        # where br_netfilter hands bridged frames to this hook (bridge-nf-call-iptables=1, as on Docker
        # hosts), guests of one bridge reach each other through it: isolateVMs governs that, not this
        ("iifname . oifname @within accept", "bridged between the guests of one network"),
        ("iifname @bridges drop", "no other network"),
    ), hook="forward"),
    Chain("postrouting", (
        ("iifname @egress oifname != @bridges masquerade", "egress leaves with the host's address"),
    ), hook="postrouting", type="nat", priority=100),  # 100: the `srcnat` priority
))
SHAPE = HOST.shape


@dataclass(frozen=True, order=True)
class Allowed:
    """A port of the host that guests on `bridge` may open, on their gateway address."""

    bridge: str
    gateway: str
    port: HostPort

    def __str__(self) -> str:
        return f"{self.bridge}:{self.gateway}:{self.port}"


@dataclass(frozen=True)
class HostRules:
    """The inet table's content: our bridges, the ports they may open, those with egress, its shape."""

    bridges: frozenset[str] = frozenset()
    allowed: frozenset[Allowed] = frozenset()
    egress: frozenset[str] = frozenset()
    shape: tuple[str, ...] = SHAPE

    def __str__(self) -> str:
        return (f"bridges[{few(sorted(self.bridges))}] allow[{few(sorted(map(str, self.allowed)))}] "
                f"egress[{few(sorted(self.egress))}]")


def host_elements(rules: HostRules) -> dict[str, list[str]]:
    """Each set's elements as nft text; ValueError for what nft text cannot hold, or rules that name
    a bridge they do not contain."""
    for name in rules.bridges:
        check_name(name)
    if not rules.egress <= rules.bridges or not {a.bridge for a in rules.allowed} <= rules.bridges:
        raise ValueError("the host's rules open a port or egress on a bridge they do not contain")
    for a in rules.allowed:
        IPv4Address(a.gateway)  # ValueError when it is not an address
    return {
        "bridges": [f'"{b}"' for b in sorted(rules.bridges)],
        "allowed": [f'"{a.bridge}" . {a.gateway} . {a.port.protocol} . {a.port.port}' for a in sorted(rules.allowed)],
        "egress": [f'"{b}"' for b in sorted(rules.egress)],
        "within": [f'"{b}" . "{b}"' for b in sorted(rules.bridges)],
    }


def parse_host_table(text_: str) -> HostRules:
    """`nft -j list table inet warmvm-ID` -> the HostRules it holds; anything `render` does not write
    shows in `shape`. ValueError for output of another form."""
    elements, found = HOST.read(text_)
    allowed = [_allowed(e) for e in elements.get("allowed", [])]
    bridges = frozenset(text(e) for e in elements.get("bridges", []))
    within = [concat(e, 2) for e in elements.get("within", [])]
    if sorted(tuple(p) if p else () for p in within) != sorted((b, b) for b in bridges):
        found = (*found, "within: not each bridge with itself")
    rules = HostRules(bridges,
                      frozenset(a for a in allowed if a is not None),
                      frozenset(text(e) for e in elements.get("egress", [])), found)
    return rules if None not in allowed else HostRules(rules.bridges, rules.allowed, rules.egress,
                                                        (*found, "elements of another form"))


def _allowed(element: Any) -> Allowed | None:
    parts = concat(element, 4)
    if parts is None:
        return None
    bridge, gateway, protocol, port = parts
    if protocol not in tuple(Transport) or not isinstance(port, int) or not isinstance(bridge, str):
        return None
    return Allowed(bridge, str(gateway), HostPort(Transport(protocol), port))
