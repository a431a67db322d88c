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


@dataclass(frozen=True)
class Source:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Network:
    name: str
    bridge: str
    cidr: IPv4Network
    pool_size: int
    pool_prefix: str
    source: Source
    isolate_vms: bool = False  # bridge port isolation: its guests reach the gateway, never each other

    @property
    def gateway(self) -> IPv4Address:
        return self.cidr.network_address + 1


@dataclass(frozen=True)
class WorkSeed:
    """Where an image's /root comes from: a path inside its rootfs, or a host directory."""

    from_rootfs: str | None
    from_dir: Path | None
    size: int | None  # None: sized from the content


@dataclass(frozen=True)
class Image:
    name: str
    kernel: Path
    initrd: Path | None
    rootfs: Path
    seed: WorkSeed | None  # None: `workSeed: none`, every disk takes the slow path
    default: bool
    source: Source


@dataclass(frozen=True)
class VM:
    name: str
    network: str
    image: str | None
    disk_size: int
    vcpus: int
    memory: int
    accel: str  # auto | kvm | tcg
    running: bool
    ip: IPv4Address | None
    source: Source
    boot: str = "cold"  # cold: a full boot | restore: from the image's boot snapshot once there is one


@dataclass(frozen=True)
class Policy:
    """How forgiving removal is; set on the command line, not in specs."""

    retain_removed: float = 86400.0  # seconds a removed VM's disk is kept in the trash (0: deleted at once)
    confirm_removals: bool = False  # apply a pass that removes more than half of the VMs


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
