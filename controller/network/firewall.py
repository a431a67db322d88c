"""Guest containment as data: the nftables rules warmvm wants for its guests, and their text. Pure.

Guests may be hostile. Two tables per warmvm instance, both named
`warmvm-INSTANCE`, so two instances on one host never touch each other's
rules, nor anyone else's tables:

- `bridge warmvm-INSTANCE` (here): frames entering a bridge from one of our
  TAPs pass only if they are the VM's own: Ethernet source its MAC, IPv4
  source its IP, ARP sender its MAC and IP, nothing but IPv4 and ARP (no
  IPv6, no VLAN tags); a TAP with no VM identity (idle in the pool, held by a
  VM without an image or whose lease is still to come) may send nothing.
- `inet warmvm-INSTANCE` (hostfilter.py): what guests reach of the host and
  beyond it, by the bridge they come in on.

The bridge table is a fixed pair of chains that look ports up in four sets
(`dropped`, `guests`, `guest_mac`, `guest_ip`); what changes with the TAPs is
only the sets' elements, keyed by the port's name (iifname), so a rule
follows its TAP whatever its index. `Ruleset` is those elements plus the
`shape` of the table: what `parse_table` reads back from `nft -j list table`
must equal what the planner wants, or both tables are replaced whole
(`render`, one `nft -f` transaction: never a moment without rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from .hostfilter import HOST, HostRules, host_elements
from .nfttable import Chain, TableDef, check_name, concat, few, text

PRIORITY = -200  # the bridge family's `filter` priority: before any forwarding decision
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

GUESTS = TableDef("bridge", (
    ("dropped", "ifname"), ("guests", "ifname"), ("guest_mac", "ifname . ether_addr"),
    ("guest_ip", "ifname . ipv4_addr"),
), (
    Chain("prerouting", (
        ("iifname @dropped drop", "ports without a guest identity send nothing"),
        ("iifname @guests jump guest", "guests are checked"),
    ), hook="prerouting", priority=PRIORITY),
    Chain("guest", (
        ("iifname . ether saddr != @guest_mac drop", "the guest's own MAC only"),
        ("ether type != { ip, arp } drop", "IPv4 and ARP only"),
        ("iifname . ip saddr != @guest_ip drop", "the guest's own IPv4 address only"),
        ("arp htype . arp ptype . arp hlen . arp plen != { 1 . ip . 6 . 4 } drop", "Ethernet/IPv4 ARP only"),
        ("iifname . arp saddr ether != @guest_mac drop", "ARP sender MAC is the guest's"),
        ("iifname . arp saddr ip != @guest_ip drop", "ARP sender IP is the guest's"),
    )),
))
FAMILY = GUESTS.family
SHAPE = GUESTS.shape  # what a table written by `render` reads back as
FAMILIES = (GUESTS.family, HOST.family)  # our table's name in each of these: what deleting it removes


@dataclass(frozen=True, order=True)
class Guest:
    """One VM's port and identity: what may enter the bridge from it."""

    port: str
    mac: str  # lower case, as nft prints it
    ip: str

    def __str__(self) -> str:
        return f"{self.port}={self.mac}/{self.ip}"

    @property
    def valid(self) -> bool:
        """An identity nft can be told (a record is a file: it could hold anything)."""
        try:
            IPv4Address(self.ip)
        except ValueError:
            return False
        return bool(_MAC.match(self.mac))


@dataclass(frozen=True)
class Ruleset:
    """The bridge table's content: ports that send nothing, guests and their identity, and its shape."""

    drop: frozenset[str] = frozenset()
    guests: frozenset[Guest] = frozenset()
    shape: tuple[str, ...] = SHAPE

    def __str__(self) -> str:
        return f"guests[{few(sorted(map(str, self.guests)))}] drop[{few(sorted(self.drop))}]"


# --- nft text ---------------------------------------------------------------------------------------

def render(table: str, rules: Ruleset, host: HostRules) -> str:
    """An `nft -f` script that replaces both our tables whole, in one transaction. ValueError for a
    name or identity nft text cannot hold safely."""
    return "\n".join(GUESTS.render(table, _guest_elements(rules)) + HOST.render(table, host_elements(host))) + "\n"


def render_delete(table: str) -> str:
    """Deletes our tables, in one transaction; each is created first, so one already gone is no error."""
    check_name(table)
    return "".join(f"table {family} {table}\ndelete table {family} {table}\n" for family in FAMILIES)


def _guest_elements(rules: Ruleset) -> dict[str, list[str]]:
    ports = sorted(rules.drop | {g.port for g in rules.guests})
    for port in ports:
        check_name(port)
    if len(ports) != len(rules.drop) + len(rules.guests):
        raise ValueError("a port is listed twice in the ruleset")
    for guest in rules.guests:
        if not guest.valid:
            raise ValueError(f"{guest.port}: {guest.mac!r} / {guest.ip!r} is not a MAC and IPv4 address")
    guests = sorted(rules.guests)
    return {
        "dropped": [f'"{p}"' for p in sorted(rules.drop)],
        "guests": [f'"{g.port}"' for g in guests],
        "guest_mac": [f'"{g.port}" . {g.mac}' for g in guests],
        "guest_ip": [f'"{g.port}" . {g.ip}' for g in guests],
    }


# --- reading it back ---------------------------------------------------------------------------------

def parse_table(text_: str) -> Ruleset:
    """`nft -j list table bridge warmvm-ID` -> the Ruleset it holds. Anything but what `render` writes
    (a set or rule missing, added or altered in kind, a guest with two identities) shows in `shape`.
    ValueError for output of another form."""
    elements, found = GUESTS.read(text_)
    drop = frozenset(text(e) for e in elements.get("dropped", []))
    ports = [text(e) for e in elements.get("guests", [])]
    macs = dict(_pair(e) for e in elements.get("guest_mac", []))
    ips = dict(_pair(e) for e in elements.get("guest_ip", []))
    guests = frozenset(Guest(p, macs[p].lower(), ips[p]) for p in ports if p in macs and p in ips)
    consistent = (len(macs) == len(elements.get("guest_mac", [])) == len(ports)
                  and len(ips) == len(elements.get("guest_ip", [])) == len(ports) and len(guests) == len(ports)
                  and not drop & set(ports))
    return Ruleset(drop, guests, found if consistent else (*found, "inconsistent sets"))


def _pair(element: Any) -> tuple[str, str]:
    parts = concat(element, 2)
    if parts is None:
        return ("", "")  # not ours: the pair counts, and the sets read as inconsistent
    return str(parts[0]), str(parts[1])
