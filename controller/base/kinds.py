"""Typed words of the vocabulary: what the planners, records and drivers say in strings today
they say in these. Each is a StrEnum, so a record on disk, a log line and a spec keep the very
strings they always had, and a comparison with such a string still holds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Accel(StrEnum):
    """How a guest's CPU runs: what a spec asks (auto too), or what a VM was started with."""

    AUTO = "auto"  # KVM where it really works here, else TCG
    KVM = "kvm"
    TCG = "tcg"


class BootMode(StrEnum):
    COLD = "cold"  # a full boot of the image
    RESTORE = "restore"  # from the image's boot snapshot
    RESUME = "resume"  # from the VM's own saved state (it was suspended)


class Readiness(StrEnum):
    """How a boot was found ready (Running)."""

    CHANNEL = "channel"  # its guest's agent said so over the control channel: no login of the controller's
    SSH = "ssh"  # one SSH login succeeded (an image without the agent, or a channel that failed)


class DiskFormat(StrEnum):
    """A work disk's format, as recorded when warmvm made it: never probed from its content."""

    RAW = "raw"
    QCOW2 = "qcow2"


class CloneMethod(StrEnum):
    """How a sized seed becomes a work disk, fastest first."""

    REFLINK = "reflink"  # a copy-on-write clone of the file's extents
    QCOW2 = "qcow2"  # a qcow2 overlay backed by the seed
    SPARSE = "sparse"  # a full sparse copy


class Taken(StrEnum):
    """The path a work disk took when it was made (its record's `taken`)."""

    SEED_QCOW2 = "seed:qcow2"
    SEED_REFLINK = "seed:reflink"
    SEED_SPARSE = "seed:sparse"
    SCRATCH = "scratch"  # built from the image's files, no seed

    @classmethod
    def from_seed(cls, method: CloneMethod) -> Taken:
        return cls(f"seed:{method}")


class Outcome(StrEnum):
    """How one applied action ended."""

    OK = "ok"
    RETRY = "retry"  # a TemporaryError: planned again, after a backoff
    FAILED = "failed"  # a PermanentError: not retried within the run


class Egress(StrEnum):
    """What a network's guests may reach beyond the host (a Network's `egress`)."""

    NONE = "none"  # nothing: the host forwards none of their packets
    NAT = "nat"  # other networks, out of the host's other interfaces, with the host's address (masquerade)


class Transport(StrEnum):
    """A port's protocol, as a Network's `hostPorts` names it."""

    TCP = "tcp"
    UDP = "udp"


class Role(StrEnum):
    """What a device of warmvm's is for, as its mark says."""

    BRIDGE = "bridge"
    POOL = "pool"  # an idle TAP of the warm pool
    VM = "vm"  # a TAP held by a VM


@dataclass(frozen=True, order=True)
class Ref:
    """An object as logs, problems and `broken` name it: `vm/demo-1`, `network/default`."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    @classmethod
    def vm(cls, name: str) -> Ref:
        return cls("vm", name)
