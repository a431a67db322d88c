"""Observed state: everything the planner knows about the host, as one value.

Built by `observe` from the drivers' readers; the planner takes it as data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .imagestate import DiskState, ImageState, observe_disks, observe_images
from .layout import Layout
from .model import Desired
from .netstate import NetState, net_state
from .rtnl import dump_addresses, dump_links
from .vmstate import VmState, observe_vms


@dataclass(frozen=True)
class Observed:
    net: NetState
    images: dict[str, ImageState] = field(default_factory=dict)
    disks: dict[str, DiskState] = field(default_factory=dict)
    clone_method: str = "sparse"  # the best way this host's state directory clones a seed
    vms: dict[str, VmState] = field(default_factory=dict)
    now: float = 0.0  # when it was observed (wall clock), for ages shown by views


def observe_net() -> NetState:
    return net_state(dump_links(), dump_addresses())


def observe(desired: Desired, layout: Layout, pubkey: str, clone_method: str) -> Observed:
    return Observed(net=observe_net(),
                    images=observe_images(layout, desired.images, pubkey),
                    disks=observe_disks(layout),
                    clone_method=clone_method,
                    vms=observe_vms(layout),
                    now=time.time())
