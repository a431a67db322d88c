"""The actions a plan is made of: small frozen records, each with a stable kind.

A plan is an ordered list of these; `apply` hands each to its driver. They
carry everything the driver needs, so applying never re-reads specs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import ClassVar

from .model import Image

PHASE_SETUP, PHASE_VM, PHASE_START, PHASE_AWAIT, PHASE_WARM, PHASE_CLEANUP = range(6)


@dataclass(frozen=True)
class Action:
    kind: ClassVar[str] = "action"
    deletes: ClassVar[bool] = False  # suppressed while any spec is invalid
    phase: ClassVar[int] = PHASE_VM
    parallel: ClassVar[bool] = False  # adjacent parallel actions run at once (they touch disjoint state)

    about: ClassVar[tuple[str, str]] = ("vm", "vm")  # the object it acts on: (kind shown, field naming it)

    @property
    def subject(self) -> str:
        prefix, field = self.about
        value = getattr(self, field)
        return f"{prefix}/{value.name if isinstance(value, Image) else value}"

    def describe(self) -> str:
        details = " ".join(f"{f.name}={_short(getattr(self, f.name))}" for f in fields(self)
                           if f.name not in ("network", "vm") and getattr(self, f.name) is not None)
        return f"{self.kind} {self.subject} {details}".rstrip()


def _short(value: object) -> str:
    if isinstance(value, Image):
        return value.name
    if isinstance(value, tuple) and len(value) > 4:
        return f"{','.join(map(str, value[:3]))},...(+{len(value) - 3})"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, Path):
        return value.name
    return str(value)


# --- network -----------------------------------------------------------------

@dataclass(frozen=True)
class BridgeEnsure(Action):
    kind: ClassVar[str] = "bridge_ensure"
    about: ClassVar[tuple[str, str]] = ("network", "network")
    phase: ClassVar[int] = PHASE_SETUP
    network: str
    bridge: str
    gateway: IPv4Interface


@dataclass(frozen=True)
class BridgeDelete(Action):
    kind: ClassVar[str] = "bridge_delete"
    about: ClassVar[tuple[str, str]] = ("network", "network")
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    network: str
    bridge: str


@dataclass(frozen=True)
class PoolGrow(Action):
    kind: ClassVar[str] = "pool_grow"
    about: ClassVar[tuple[str, str]] = ("pool", "network")
    phase: ClassVar[int] = PHASE_WARM
    network: str
    bridge: str
    prefix: str
    count: int


@dataclass(frozen=True)
class PoolShrink(Action):
    kind: ClassVar[str] = "pool_shrink"
    about: ClassVar[tuple[str, str]] = ("pool", "network")
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    network: str
    taps: tuple[str, ...]


@dataclass(frozen=True)
class TapAttach(Action):
    """Re-attach and bring up one of our TAPs that drifted (detached or down)."""

    kind: ClassVar[str] = "tap_attach"
    about: ClassVar[tuple[str, str]] = ("tap", "tap")
    phase: ClassVar[int] = PHASE_SETUP
    network: str
    bridge: str
    tap: str
    vm: str | None = None  # the VM holding it; None: an idle pool TAP


@dataclass(frozen=True)
class TapClaim(Action):
    """Give a VM its TAP: an idle one from the pool, or a new one when the pool is empty."""

    kind: ClassVar[str] = "tap_claim"
    vm: str
    network: str
    bridge: str
    prefix: str
    tap: str | None


@dataclass(frozen=True)
class TapRelease(Action):
    """A VM's TAP goes back to its pool (`keep`), or is deleted when the pool is full."""

    kind: ClassVar[str] = "tap_release"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str
    network: str
    bridge: str
    tap: str
    keep: bool


# --- seeds and work disks ------------------------------------------------------

@dataclass(frozen=True)
class SeedGenerate(Action):
    """Build the image's base work seed for inputs with this fingerprint."""

    kind: ClassVar[str] = "seed_generate"
    about: ClassVar[tuple[str, str]] = ("image", "image")
    phase: ClassVar[int] = PHASE_WARM
    image: Image
    fingerprint: str


@dataclass(frozen=True)
class SeedSize(Action):
    """Derive the seed grown to one disk size, so that VM disks of that size are plain clones."""

    kind: ClassVar[str] = "seed_size"
    about: ClassVar[tuple[str, str]] = ("image", "image")
    image: Image
    fingerprint: str
    size: int


@dataclass(frozen=True)
class SeedDelete(Action):
    kind: ClassVar[str] = "seed_delete"
    about: ClassVar[tuple[str, str]] = ("image", "image")
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    image: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class DiskClone(Action):
    kind: ClassVar[str] = "disk_clone"
    vm: str
    image: Image
    fingerprint: str
    size: int
    method: str


@dataclass(frozen=True)
class DiskScratch(Action):
    """The slow path: a new ext4 of the disk's size, filled with the image's /root."""

    kind: ClassVar[str] = "disk_scratch"
    vm: str
    image: Image
    size: int


@dataclass(frozen=True)
class DiskGrow(Action):
    kind: ClassVar[str] = "disk_grow"
    vm: str
    size: int


@dataclass(frozen=True)
class DiskDelete(Action):
    kind: ClassVar[str] = "disk_delete"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str


# --- virtual machines ------------------------------------------------------------

REMOVED = "spec removed"


@dataclass(frozen=True)
class IpAssign(Action):
    """Lease the VM its address (and create its record): the first step of a new VM."""

    kind: ClassVar[str] = "ip_assign"
    vm: str
    network: str
    ip: IPv4Address


@dataclass(frozen=True)
class VmStart(Action):
    kind: ClassVar[str] = "vm_start"
    phase: ClassVar[int] = PHASE_START
    vm: str
    image: Image
    address: IPv4Interface
    gateway: IPv4Address
    vcpus: int
    memory: int
    accel: str
    spec: str


@dataclass(frozen=True)
class VmAwait(Action):
    """Wait for SSH to answer; past the boot deadline, kill it (the next pass starts it again)."""

    kind: ClassVar[str] = "vm_await"
    phase: ClassVar[int] = PHASE_AWAIT
    parallel: ClassVar[bool] = True  # VMs boot side by side: each is seen ready when it is
    vm: str
    ip: IPv4Address


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
class VmForget(Action):
    """The last step of a removed VM: its record goes, and with it its IP lease."""

    kind: ClassVar[str] = "vm_forget"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str

