"""Desired state: the validated, resolved objects the planner works on.

Produced by `specs.load`, consumed by `plan`. Plain frozen dataclasses with
every default already applied (a VM's network and image are resolved), so
the planner never looks at YAML or the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from .errors import SpecError
from .kinds import Accel, BootMode, Egress, Transport

IFNAMSIZ = 15  # the kernel's limit on a device name (16 bytes with its NUL)


@dataclass(frozen=True)
class Source:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, order=True)
class HostPort:
    """A port of the host that a network's guests may reach on their gateway address."""

    protocol: Transport
    port: int

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True, kw_only=True)
class Network:
    name: str
    bridge: str
    cidr: IPv4Network
    pool_size: int
    pool_prefix: str
    source: Source
    isolate_vms: bool = False  # bridge port isolation: its guests reach the gateway, never each other
    host_ports: tuple[HostPort, ...] = ()  # all its guests may open on the host: these ports of the gateway
    egress: Egress = Egress.NONE  # nat: its guests reach other networks, masqueraded as the host

    @property
    def gateway(self) -> IPv4Address:
        return self.cidr.network_address + 1


@dataclass(frozen=True, kw_only=True)
class WorkSeed:
    """Where an image's /root comes from: a path inside its rootfs, or a host directory."""

    from_rootfs: str | None
    from_dir: Path | None
    size: int | None  # None: sized from the content


@dataclass(frozen=True, kw_only=True)
class Image:
    name: str
    kernel: Path
    initrd: Path | None
    rootfs: Path
    seed: WorkSeed | None  # None: `workSeed: none`, every disk takes the slow path
    default: bool
    source: Source


@dataclass(frozen=True, kw_only=True)
class VM:
    name: str
    network: str
    image: str | None
    disk_size: int
    vcpus: int
    memory: int
    accel: Accel
    running: bool
    ip: IPv4Address | None
    source: Source
    suspended: bool = False  # its memory in its own state file, no QEMU; false again: resumed from it
    boot: BootMode = BootMode.COLD  # restore: from the image's boot snapshot once there is one


@dataclass(frozen=True)
class Policy:
    """How forgiving removal is, and how far work disks may overcommit the state's file system; set on
    the command line, not in specs."""

    retain_removed: float = 86400.0  # seconds a removed VM's disk is kept in the trash (0: deleted at once)
    confirm_removals: bool = False  # apply a pass that removes more than half of the VMs
    disk_overcommit: float = 1.0  # work disks' virtual sizes may add up to this many times the room they have


@dataclass(frozen=True)
class Desired:
    networks: dict[str, Network] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)
    vms: dict[str, VM] = field(default_factory=dict)
    errors: tuple[SpecError, ...] = ()
    empty_files: tuple[str, ...] = ()  # spec files holding no object at all: an editor mid-save, or a mistake
    policy: Policy = Policy()

    @property
    def complete(self) -> bool:
        """True when every spec is valid: only then may the controller delete anything."""
        return not self.errors

    @property
    def objects(self) -> int:
        return len(self.networks) + len(self.images) + len(self.vms)


@dataclass(frozen=True)
class Lease:
    """A VM's IP lease on a network, with the MAC its guest has: what its record holds, and what
    the network's containment lets that guest send."""

    network: str
    ip: str
    mac: str


@dataclass(frozen=True, kw_only=True)
class HostCaps:
    """What this host can do, observed once per pass, so that every decision that depends on it
    is taken in the plan (and shown by `warmvm plan`), never again at apply time."""

    kvm: bool = False  # KVM that can run a guest kernel (accel: auto means kvm only then)
    tsc_khz: int | None = None  # the TSC rate a TCG guest is told (it cannot calibrate against the PIT)
    qemu: str | None = None  # the QEMU binary's path, None when it is not installed

    def accel(self, wanted: Accel) -> Accel | None:
        """What a spec's accel runs as here; None: KVM asked for where it is not usable."""
        if wanted == Accel.AUTO:
            return Accel.KVM if self.kvm else Accel.TCG
        if wanted == Accel.KVM and not self.kvm:
            return None
        return Accel(wanted)
