"""Observed state: everything the planners know about the host, as one value.

Composed of each domain's observed types (network/state.py, disks/state.py,
vms/state.py, snapshots/state.py); built by the observers that `wiring` puts together, and handed
to the pure planners as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..disks.state import DiskRecord, DiskState, ImageState
from ..network.state import NetState
from ..snapshots.state import Snapshots
from ..vms.state import VmRecord, VmState


@dataclass(frozen=True)
class TrashEntry:
    """A removed VM's directory, moved aside whole: its disk and its lease, kept for a while."""

    vm: str
    removed_at: int  # unix seconds
    path: Path
    record: VmRecord | None  # its lease when it was removed
    disk: DiskRecord | None
    seed: Path | None  # the seed file a trashed qcow2 disk is backed by: it lives as long as the entry
    size: int  # bytes the entry takes on disk


@dataclass(frozen=True)
class Observed:
    net: NetState
    images: dict[str, ImageState] = field(default_factory=dict)
    disks: dict[str, DiskState] = field(default_factory=dict)
    clone_method: str = "sparse"  # the best way this host's state directory clones a seed
    vms: dict[str, VmState] = field(default_factory=dict)
    now: float = 0.0  # when it was observed (wall clock): for the trash's ages and expiry
    trash: tuple[TrashEntry, ...] = ()
    broken: dict[str, str] = field(default_factory=dict)  # "vm/NAME" -> why its records cannot be read
    snapshots: Snapshots = Snapshots()

    @property
    def running(self) -> frozenset[str]:
        """VMs whose QEMU is alive: their TAP and disk stay theirs, whatever the specs say."""
        return frozenset(name for name, state in self.vms.items() if state.alive)

    @property
    def broken_vms(self) -> frozenset[str]:
        return frozenset(key.removeprefix("vm/") for key in self.broken if key.startswith("vm/"))

    def restorable(self, vm: str, retention: float) -> TrashEntry | None:
        """The newest trash entry of `vm` still within its retention, if `vm` has no record and no
        disk of its own: a VM that comes back gets its own disk back, not a new one."""
        if vm in self.vms or vm in self.disks or f"vm/{vm}" in self.broken:
            return None
        kept = [e for e in self.trash if e.vm == vm and e.removed_at + retention > self.now]
        return max(kept, key=lambda e: e.removed_at) if kept else None
