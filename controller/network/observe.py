"""Reads the network namespace into NetState: one link dump and one address dump."""

from __future__ import annotations

from .rtnl import dump_addresses, dump_links
from .state import NetState, net_state


def observe_net(instance: str | None) -> NetState:
    return net_state(dump_links(), dump_addresses(), instance)
