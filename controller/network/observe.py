"""Reads the network namespace into NetState: one link dump, one address dump, one or two nft calls.

With TAPs of ours to contain, both our tables are read (`nft -j list table
bridge warmvm-ID`, then `inet`), and net.ipv4.ip_forward with them (a file);
with none, only the tables' names are listed (`nft -j list tables`), to see
whether one is left to delete. If nft cannot be asked (not installed,
refused), that is a fact too, one line the planner reports as a problem,
never an exception.
"""

from __future__ import annotations

from dataclasses import replace

from ..adapters import nft, sysctl
from ..adapters.netlink.rtnl import dump_addresses, dump_links
from .firewall import FAMILIES, FAMILY, parse_table
from .hostfilter import HOST, parse_host_table
from .nfttable import parse_tables, table_name
from .state import FirewallState, NetState, net_state


def observe_net(instance: str | None) -> NetState:
    state = net_state(dump_links(), dump_addresses(), instance)
    if instance is None:
        return state  # no state directory yet: nothing of ours to contain
    return replace(state, firewall=observe_firewall(table_name(instance), needed=bool(state.taps)))


def observe_firewall(table: str, needed: bool) -> FirewallState:
    try:
        if not needed:
            listed = parse_tables(nft.list_tables())
            return FirewallState(table, any((family, table) in listed for family in FAMILIES), None)
        guests, host = nft.list_table(FAMILY, table), nft.list_table(HOST.family, table)
        return FirewallState(table, guests is not None or host is not None,
                             parse_table(guests) if guests is not None else None,
                             host=parse_host_table(host) if host is not None else None, forwarding=_forwarding())
    except OSError as e:
        return FirewallState(table, False, None, error=e.strerror or str(e))
    except ValueError as e:  # output we cannot read: as good as no answer
        return FirewallState(table, False, None, error=f"nft: {e}")


def _forwarding() -> bool | None:
    try:
        return sysctl.read(sysctl.IP_FORWARD) == "1"
    except OSError:
        return None  # unknown: egress that needs it plans to turn it on, and the driver says why it cannot
