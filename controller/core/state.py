"""Observed state: everything the planners know about the host, as one value.

Composed of each domain's observed types (network/state.py, disks/state.py,
vms/state.py); built by the observers that `wiring` puts together, and handed
to the pure planners as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..disks.state import DiskState, ImageState
from ..network.state import NetState
from ..vms.state import VmState


@dataclass(frozen=True)
class Observed:
    net: NetState
    images: dict[str, ImageState] = field(default_factory=dict)
    disks: dict[str, DiskState] = field(default_factory=dict)
    clone_method: str = "sparse"  # the best way this host's state directory clones a seed
    vms: dict[str, VmState] = field(default_factory=dict)
    now: float = 0.0  # when it was observed (wall clock), for ages shown by views

    @property
    def running(self) -> frozenset[str]:
        """VMs whose QEMU is alive: their TAP and disk stay theirs, whatever the specs say."""
        return frozenset(name for name, state in self.vms.items() if state.alive)
