"""Observed VM runtime: each VM's record plus whether its QEMU is alive and ours; the trash of
removed VMs; and the view of a pass's observation that the VM planner reads. Pure types.

The record (state/vms/VM/vm.json) holds what cannot be observed: the IP lease,
the MAC, when the VM was first seen, and the current boot (pid, start, when
SSH first answered, failed attempts, exits in a row and when it may start
again: a back-off must outlive the process that counted it; how it was found
ready). Whether QEMU
runs is always observed (observe.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..base import records
from ..base.kinds import Accel, BootMode, Readiness
from ..base.model import HostCaps, Lease
from ..disks.state import DiskRecord, DiskState, StateSpace
from ..network.state import NetState
from ..snapshots.state import Snapshots

BOOT_ATTEMPTS = 3  # boots that never answer SSH before a VM is Failed (until its spec changes)
# A guest that exits after it was ready is started again: at once the first time, then after a delay
# that doubles with each exit in a row, up to RESTART_CAP; one that ran STABLE_RUN before it exited
# starts a new count (Kubernetes' CrashLoopBackOff: 10 s doubling to 5 min, reset after 10 min).
RESTART_BASE = 2.0
RESTART_CAP = 300.0
STABLE_RUN = 600.0


def restart_delay(exits: int) -> float:
    """How long after its `exits`-th exit in a row a guest is started again."""
    return 0.0 if exits <= 1 else min(RESTART_CAP, RESTART_BASE * 2.0 ** (exits - 2))


@dataclass(frozen=True, kw_only=True)
class VmRecord:
    LABEL: ClassVar[str] = "VM"

    network: str
    ip: str
    mac: str
    created: float  # when the VM was first provisioned: the start of its create-to-ready time
    spec: str = ""  # hash of what the current boot was started with (restart when it changes)
    pid: int | None = None
    started: float | None = None
    accel: Accel | None = None  # as resolved: kvm | tcg
    ready: float | None = None
    boots: int = 0
    attempts: int = 0  # consecutive boots that never answered SSH
    failure: str | None = None
    create_to_ready_ms: float | None = None
    boot: BootMode | None = None  # how the current boot began
    snapshot: str | None = None  # the snapshot (fingerprint) the current boot was restored from
    restore_failed: str | None = None  # the snapshot (fingerprint) a restore of this VM failed from: not tried again
    uid: int | None = None  # what its QEMU runs as, its own (base/uids.py); reused only once the VM is gone
    suspending: bool = False  # a suspend began: its guest may be paused, its state maybe saved
    saved: str | None = None  # the sha256 of its saved state (suspend.state), complete and in place
    saved_at: float | None = None  # when it was suspended (unix seconds)
    saved_on: str | None = None  # the machine it was saved from (qemu.inputs_of): resumed on that one only
    exits: int = 0  # exits in a row of a guest that was ready (its crash loop; see restart_delay)
    retry_at: float | None = None  # not started again before this (unix seconds): its back-off
    readiness: Readiness | None = None  # how the current boot was found ready: its guest's channel, or SSH

    @property
    def lease(self) -> Lease:
        return Lease(self.network, self.ip, self.mac)

    def with_(self, **changes: Any) -> VmRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return records.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> VmRecord:
        return records.from_dict(cls, data, where)


@dataclass(frozen=True)
class VmState:
    name: str
    record: VmRecord
    alive: bool
    saved_size: int | None = None  # its saved state file's size (None: there is none)
    pid: int | None = None  # its QEMU's, as found (its pid file's, which the record may not know yet)

    @property
    def resumable(self) -> bool:
        """A saved state that its record vouches for (its digest is checked before QEMU reads it)."""
        return self.saved_size is not None and self.record.saved is not None

    @property
    def ready(self) -> bool:
        return self.alive and self.record.ready is not None


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


class VmsView(Protocol):
    """What the VM planner (and `get vms`) read of a pass's observation."""

    @property
    def vms(self) -> Mapping[str, VmState]: ...
    @property
    def net(self) -> NetState: ...  # which TAP each VM holds
    @property
    def disks(self) -> Mapping[str, DiskState]: ...  # which VMs have a disk, in which format
    @property
    def space(self) -> StateSpace | None: ...  # the state's file system: a suspend's room
    @property
    def snapshots(self) -> Snapshots: ...
    @property
    def host(self) -> HostCaps: ...
    @property
    def trash(self) -> tuple[TrashEntry, ...]: ...
    @property
    def broken_vms(self) -> frozenset[str]: ...
    @property
    def now(self) -> float: ...

    def restorable(self, vm: str, retention: float) -> TrashEntry | None: ...
