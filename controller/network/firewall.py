"""Guest containment as data: the nftables ruleset warmvm wants on its bridges, and its text. Pure.

Guests may be hostile. Frames entering a bridge from one of our TAPs pass
only if they are the VM's own: Ethernet source its MAC, IPv4 source its IP,
ARP sender its MAC and IP, nothing but IPv4 and ARP (no IPv6, no VLAN tags);
a TAP with no VM identity (idle in the pool, held by a VM without an image
or whose lease is still to come) may send nothing. All of it lives in ONE
table per warmvm instance, `bridge warmvm-INSTANCE`, so two instances on one
host never touch each other's rules, nor anyone else's tables.

The ruleset is a fixed pair of chains that look ports up in four sets
(`dropped`, `guests`, `guest_mac`, `guest_ip`); what changes with the TAPs is
only the sets' elements, keyed by the port's name (iifname), so a rule
follows its TAP whatever its index. `Ruleset` is those elements plus the
`shape` of the table (its sets, chains and rules by their comments): what
`parse_table` reads back from `nft -j list table` must equal what the
planner wants, or the table is replaced whole (`render`, one `nft -f`
transaction: never a moment without rules).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

FAMILY = "bridge"
TABLE_PREFIX = "warmvm-"
PRIORITY = -200  # the bridge family's `filter` priority: before any forwarding decision
_VERSION = "wv1"  # in every rule's comment: a table written by an older ruleset is replaced
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+@-]{1,15}$")  # a port name that can be written in nft text
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

SETS = (("dropped", "ifname"), ("guests", "ifname"), ("guest_mac", "ifname . ether_addr"),
        ("guest_ip", "ifname . ipv4_addr"))
# (chain, its base-chain hook or None, rules as (nft text, what it is for))
CHAINS: tuple[tuple[str, str | None, tuple[tuple[str, str], ...]], ...] = (
    ("prerouting", "prerouting", (
        ("iifname @dropped drop", "ports without a guest identity send nothing"),
        ("iifname @guests jump guest", "guests are checked"),
    )),
    ("guest", None, (
        ("iifname . ether saddr != @guest_mac drop", "the guest's own MAC only"),
        ("ether type != { ip, arp } drop", "IPv4 and ARP only"),
        ("iifname . ip saddr != @guest_ip drop", "the guest's own IPv4 address only"),
        ("arp htype . arp ptype . arp hlen . arp plen != { 1 . ip . 6 . 4 } drop", "Ethernet/IPv4 ARP only"),
        ("iifname . arp saddr ether != @guest_mac drop", "ARP sender MAC is the guest's"),
        ("iifname . arp saddr ip != @guest_ip drop", "ARP sender IP is the guest's"),
    )),
)


def _comment(why: str) -> str:
    return f"{_VERSION}: {why}"


def _shape() -> tuple[str, ...]:
    sets = [f"set {name} {kind}" for name, kind in SETS]
    chains = [f"chain {name} filter {hook} {PRIORITY} accept" if hook else f"chain {name}"
              for name, hook, _ in CHAINS]
    rules = [f"rule {name} {_comment(why)}" for name, _, rules in CHAINS for _, why in rules]
    return tuple(sorted(sets + chains)) + _by_chain(rules)


def _by_chain(rules: list[str]) -> tuple[str, ...]:
    """Rules in order within each chain, the chains in name order (nft lists them in creation order)."""
    return tuple(sorted(rules, key=lambda rule: rule.split(" ", 2)[1]))


SHAPE = _shape()  # what a table written by `render` reads back as


def table_name(instance: str) -> str:
    return f"{TABLE_PREFIX}{instance}"


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
    """The table's content: ports that send nothing, guests and their identity, and the table's shape."""

    drop: frozenset[str] = frozenset()
    guests: frozenset[Guest] = frozenset()
    shape: tuple[str, ...] = SHAPE

    def __str__(self) -> str:
        guests = sorted(map(str, self.guests))
        drop = sorted(self.drop)
        return f"guests[{_few(guests)}] drop[{_few(drop)}]"


def _few(items: list[str], keep: int = 3) -> str:
    return ",".join(items) if len(items) <= keep + 1 else f"{','.join(items[:keep])},...(+{len(items) - keep})"


# --- nft text ---------------------------------------------------------------------------------------

def render(table: str, rules: Ruleset) -> str:
    """An `nft -f` script that replaces our table whole, in one transaction (creating it first makes
    the delete safe when it does not exist yet). ValueError for a name or identity nft text cannot
    hold safely."""
    _check_name(table)
    ports = sorted(rules.drop | {g.port for g in rules.guests})
    for port in ports:
        _check_name(port)
    if len(ports) != len(rules.drop) + len(rules.guests):
        raise ValueError("a port is listed twice in the ruleset")
    for guest in rules.guests:
        if not guest.valid:
            raise ValueError(f"{guest.port}: {guest.mac!r} / {guest.ip!r} is not a MAC and IPv4 address")
    guests = sorted(rules.guests)
    elements = {
        "dropped": [f'"{p}"' for p in sorted(rules.drop)],
        "guests": [f'"{g.port}"' for g in guests],
        "guest_mac": [f'"{g.port}" . {g.mac}' for g in guests],
        "guest_ip": [f'"{g.port}" . {g.ip}' for g in guests],
    }
    lines = [f"table {FAMILY} {table}", f"delete table {FAMILY} {table}", f"table {FAMILY} {table} {{"]
    for name, kind in SETS:
        body = f" elements = {{ {', '.join(elements[name])} }}" if elements[name] else ""
        lines.append(f"  set {name} {{ type {kind};{body} }}")
    for name, hook, chain_rules in CHAINS:
        lines.append(f"  chain {name} {{")
        if hook:
            lines.append(f"    type filter hook {hook} priority {PRIORITY}; policy accept;")
        lines += [f'    {text} comment "{_comment(why)}"' for text, why in chain_rules]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delete(table: str) -> str:
    _check_name(table)
    return f"delete table {FAMILY} {table}\n"


def _check_name(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"{name!r} cannot be named in an nft rule (letters, digits and _.+@- only)")


# --- reading it back ---------------------------------------------------------------------------------

def parse_tables(text: str) -> frozenset[str]:
    """The table names of `nft -j list tables bridge`; ValueError for output of another form."""
    try:
        return frozenset(str(item["table"]["name"]) for item in _items(text) if "table" in item)
    except (KeyError, TypeError) as e:
        raise ValueError(f"unexpected nft JSON ({e!r})") from None


def parse_table(text: str) -> Ruleset:
    """`nft -j list table bridge warmvm-ID` -> the Ruleset it holds. Anything but what `render` writes
    (a set or rule missing, added or altered in kind, a guest with two identities) shows in `shape`.
    ValueError for output of another form."""
    try:
        return _parse_table(text)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"unexpected nft JSON ({e!r})") from None


def _parse_table(text: str) -> Ruleset:
    elements: dict[str, list[Any]] = {}
    shape: list[str] = []
    rules: list[str] = []
    for item in _items(text):
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
    drop = frozenset(_text(e) for e in elements.get("dropped", []))
    ports = [_text(e) for e in elements.get("guests", [])]
    macs = dict(_pair(e) for e in elements.get("guest_mac", []))
    ips = dict(_pair(e) for e in elements.get("guest_ip", []))
    guests = frozenset(Guest(p, macs[p].lower(), ips[p]) for p in ports if p in macs and p in ips)
    consistent = (len(macs) == len(elements.get("guest_mac", [])) == len(ports)
                  and len(ips) == len(elements.get("guest_ip", [])) == len(ports) and len(guests) == len(ports)
                  and not drop & set(ports))
    found = tuple(sorted(shape)) + _by_chain(rules)
    return Ruleset(drop, guests, found if consistent else (*found, "inconsistent sets"))


def _items(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
        items = data["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"nft printed no JSON ruleset ({e})") from None
    return [item for item in items if isinstance(item, dict)]


def _text(element: Any) -> str:
    return element if isinstance(element, str) else json.dumps(element)  # not a name we wrote: drift


def _pair(element: Any) -> tuple[str, str]:
    if not (isinstance(element, dict) and isinstance(element.get("concat"), list) and len(element["concat"]) == 2):
        return ("", "")  # not ours: the pair counts, and the sets read as inconsistent
    port, value = element["concat"]
    return str(port), str(value)
