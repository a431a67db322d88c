"""Observed state: everything the planner knows about the host, as one value.

Built by `observe` from the drivers' readers; the planner takes it as data.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rtnl import dump_addresses, dump_links
from .netstate import NetState, net_state


@dataclass(frozen=True)
class Observed:
    net: NetState


def observe() -> Observed:
    return Observed(net=net_state(dump_links(), dump_addresses()))
