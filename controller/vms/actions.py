"""VM actions: an IP lease, a QEMU started, awaited, stopped, and a VM forgotten."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import ClassVar

from ..base.actions import PHASE_AWAIT, PHASE_CLEANUP, PHASE_SETUP, PHASE_START, Action
from ..base.kinds import Accel, DiskFormat
from ..base.model import Image
from ..snapshots.state import Snapshot

REMOVED = "spec removed"


@dataclass(frozen=True)
class IpAssign(Action):
    """Lease the VM its address (and create its record): the first step of a new VM."""

    kind: ClassVar[str] = "ip_assign"
    step: ClassVar[int] = 0
    vm: str
    network: str
    ip: IPv4Address
    uid: int | None = None  # its QEMU's own (base/uids.py), leased with the address


@dataclass(frozen=True, kw_only=True)
class VmStart(Action):
    """Spawn the VM's QEMU on its TAP and work disk, both named here (from observed state, or from
    the TAP claim and disk action planned before it in the same pass)."""

    kind: ClassVar[str] = "vm_start"
    phase: ClassVar[int] = PHASE_START
    step: ClassVar[int] = 3
    vm: str
    image: Image
    tap: str | None
    disk_format: DiskFormat | None  # as recorded when the disk was made
    address: IPv4Interface
    gateway: IPv4Address
    vcpus: int
    memory: int
    accel: Accel  # as resolved for this host: kvm | tcg
    tsc_khz: int | None = None  # what a TCG guest is told its TSC runs at (a restored one: its snapshot's)
    spec: str
    snapshot: Snapshot | None = None  # restored from it (falling back to a cold boot if that fails)
    cold_because: str | None = None  # why a VM that asks to be restored boots cold
    uid: int | None = None  # what its QEMU runs as: the VM's own (never None when planned)
    resume: bool | None = None  # True: from its own saved state (suspend.state), which its await loads


@dataclass(frozen=True)
class VmAwait(Action):
    """Wait for SSH to answer; past the boot deadline, kill it (the next pass starts it again). A
    restored VM's state is loaded here, so that VMs restored together load side by side."""

    kind: ClassVar[str] = "vm_await"
    phase: ClassVar[int] = PHASE_AWAIT
    parallel: ClassVar[bool] = True  # VMs boot side by side: each is seen ready when it is
    waits: ClassVar[bool] = True
    vm: str
    ip: IPv4Address
    # its start spawned QEMU to restore this: the state is loaded here first. Not part of the wait's
    # identity: the daemon never runs a second wait for a VM beside the one loading its state
    snapshot: Snapshot | None = field(default=None, compare=False)
    resume: bool | None = field(default=None, compare=False)  # True: its start spawned QEMU to resume


@dataclass(frozen=True)
class VmStop(Action):
    kind: ClassVar[str] = "vm_stop"
    phase: ClassVar[int] = PHASE_SETUP  # a VM being replaced or removed stops before anything else
    parallel: ClassVar[bool] = True  # each may wait for its guest to power off
    vm: str
    reason: str

    @property
    def deletes(self) -> bool:  # type: ignore[override]
        return self.reason == REMOVED


@dataclass(frozen=True)
class VmSuspend(Action):
    """Its guest paused, its whole state saved to its own file, QEMU gone; the disk, lease, TAP and
    identity stay. Also what finishes a suspend a killed run began."""

    kind: ClassVar[str] = "vm_suspend"
    phase: ClassVar[int] = PHASE_SETUP
    parallel: ClassVar[bool] = True  # each writes its own file
    vm: str
    memory: int  # the most its state can take (QEMU leaves out pages never written): planned to fit


@dataclass(frozen=True)
class VmContinue(Action):
    """A guest a killed run paused to suspend, while its spec no longer asks for it: it runs on."""

    kind: ClassVar[str] = "vm_continue"
    phase: ClassVar[int] = PHASE_SETUP
    vm: str


@dataclass(frozen=True)
class VmExited(Action):
    """A guest that was ready and whose QEMU exited without being asked: the exit is recorded (how
    many in a row, and when it may start again), so that a crash-looping guest backs off."""

    kind: ClassVar[str] = "vm_exited"
    phase: ClassVar[int] = PHASE_SETUP
    vm: str


@dataclass(frozen=True)
class VmForget(Action):
    """The last step of a removed VM: its record goes, and with it its IP lease."""

    kind: ClassVar[str] = "vm_forget"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str


@dataclass(frozen=True)
class VmTrash(Action):
    """A removed, stopped VM's directory (its disk and lease) moved aside whole, in one rename."""

    kind: ClassVar[str] = "vm_trash"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str


@dataclass(frozen=True)
class VmRestore(Action):
    """A VM that came back within the retention gets its trashed directory back: its own disk, and
    its old address when that is still free (`ip`: its lease from now on; None: none is free, and it
    is leased once one is)."""

    kind: ClassVar[str] = "vm_restore"
    step: ClassVar[int] = 0
    vm: str
    removed_at: int
    network: str
    ip: IPv4Address | None


@dataclass(frozen=True)
class TrashExpire(Action):
    kind: ClassVar[str] = "trash_expire"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str
    removed_at: int
