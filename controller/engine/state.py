"""Observed state: everything the planners know about the host, as one value.

Composed of each domain's observed types (network/state.py, disks/state.py,
vms/state.py, snapshots/state.py) and the host's capabilities; built by the
observers that `engine.host` puts together, and handed to the pure planners
as data. Each planner reads it through its domain's narrow view (a Protocol
in the domain's state.py), which this value satisfies: a domain knows only
what its view names, never this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..base.kinds import CloneMethod
from ..base.model import HostCaps, Lease
from ..disks.state import DiskState, ImageState, StateSpace
from ..network.state import NetState
from ..snapshots.state import Snapshots
from ..vms.state import TrashEntry, VmState


@dataclass(frozen=True)
class Observed:
    net: NetState
    images: dict[str, ImageState] = field(default_factory=dict)
    disks: dict[str, DiskState] = field(default_factory=dict)
    clone_method: CloneMethod = CloneMethod.SPARSE  # the way this pass clones a seed (the best, or the one asked)
    vms: dict[str, VmState] = field(default_factory=dict)
    now: float = 0.0  # when it was observed (wall clock): for the trash's ages and expiry
    trash: tuple[TrashEntry, ...] = ()
    broken: dict[str, str] = field(default_factory=dict)  # "vm/NAME" -> why its records cannot be read
    snapshots: Snapshots = Snapshots()
    host: HostCaps = HostCaps()
    space: StateSpace | None = None  # the state's file system; None: not observed (work disks go unbudgeted)

    @property
    def running(self) -> frozenset[str]:
        """VMs whose QEMU is alive, or whose saved memory waits to run again (suspended): their TAP and
        disk stay theirs, as they are, whatever the specs say."""
        return frozenset(name for name, state in self.vms.items() if state.alive or state.saved_size is not None)

    @cached_property
    def broken_vms(self) -> frozenset[str]:
        return frozenset(key.removeprefix("vm/") for key in self.broken if key.startswith("vm/"))

    @cached_property
    def leases(self) -> dict[str, Lease]:
        return {name: state.record.lease for name, state in self.vms.items()}

    @property
    def trash_seeds(self) -> frozenset[Path]:
        """Seed files backing a trashed qcow2 disk: they live as long as its entry."""
        return frozenset(e.seed for e in self.trash if e.seed is not None)

    def restorable(self, vm: str, retention: float) -> TrashEntry | None:
        """The newest trash entry of `vm` still within its retention, if `vm` has no record and no
        disk of its own: a VM that comes back gets its own disk back, not a new one."""
        if vm in self.vms or vm in self.disks or vm in self.broken_vms:
            return None
        kept = [e for e in self.trash if e.vm == vm and e.removed_at + retention > self.now]
        return max(kept, key=lambda e: e.removed_at) if kept else None
