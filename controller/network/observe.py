"""Reads the network namespace into NetState: one link dump, one address dump, one nft call.

The nft call reads our containment table (`nft -j list table bridge
warmvm-ID`) when we hold TAPs it must cover; with none, only the bridge
family's table names are listed, to see whether a table is left to delete.
If nft cannot be asked (not installed, refused), that is a fact too, one
line the planner reports as a problem, never an exception.
"""

from __future__ import annotations

from dataclasses import replace

from ..adapters import nft
from ..adapters.netlink.rtnl import dump_addresses, dump_links
from .firewall import FAMILY, parse_table, parse_tables, table_name
from .state import FirewallState, NetState, net_state


def observe_net(instance: str | None) -> NetState:
    state = net_state(dump_links(), dump_addresses(), instance)
    if instance is None:
        return state  # no state directory yet: nothing of ours to contain
    return replace(state, firewall=observe_firewall(table_name(instance), needed=bool(state.taps)))


def observe_firewall(table: str, needed: bool) -> FirewallState:
    try:
        if not needed:
            return FirewallState(table, table in parse_tables(nft.list_tables(FAMILY)), None)
        text = nft.list_table(FAMILY, table)
        return FirewallState(table, text is not None, parse_table(text) if text is not None else None)
    except OSError as e:
        return FirewallState(table, False, None, error=e.strerror or str(e))
    except ValueError as e:  # output we cannot read: as good as no answer
        return FirewallState(table, False, None, error=f"nft: {e}")
