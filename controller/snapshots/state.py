"""Observed boot snapshots and the record each keeps. Pure types.

A snapshot is a template VM of one image and one shape (memory, vCPUs,
accel), saved by QEMU before the guest took any identity. Its state file
(snapshots/IMAGE/FP.bin) is written by QEMU out of guest memory, so warmvm
never reads its content, only its digest; what it is, is what its record
(FP.json, written after the file) says: the format, the shape, the QEMU and
the TSC rate it was made with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..base import records
from ..base.errors import PermanentError
from ..base.kinds import Accel
from ..base.model import HostCaps

FORMAT = "qemu-migration/1"  # QEMU's own migration stream, as QMP `migrate` writes it


@dataclass(frozen=True, order=True)
class Shape:
    """What a snapshot must match in a VM that is restored from it."""

    memory: int
    vcpus: int
    accel: Accel  # as the spec says: auto | kvm | tcg

    def __str__(self) -> str:
        return f"{self.memory >> 20}Mi/{self.vcpus}cpu/{self.accel}"


@dataclass(frozen=True, kw_only=True)
class SnapshotRecord:
    LABEL: ClassVar[str] = "snapshot"

    image: str
    fingerprint: str
    memory: int
    vcpus: int
    accel: Accel  # as resolved: kvm | tcg
    tsc_khz: int | None  # on the template's kernel command line, which a restoring QEMU repeats
    size: int
    sha256: str
    generate_ms: float
    created: float
    qemu: str  # the QEMU version that wrote it
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return records.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> SnapshotRecord:
        record = records.from_dict(cls, data, where)
        if record.format != FORMAT or record.accel == Accel.AUTO or len(record.sha256) != 64:
            raise PermanentError(f"{where}: not a snapshot record of format {FORMAT}")
        return record


@dataclass(frozen=True)
class Snapshot:
    """A complete snapshot: its state file, as its record describes it."""

    path: Path
    record: SnapshotRecord

    def __str__(self) -> str:
        return f"{self.record.image}/{self.record.fingerprint}"


@dataclass(frozen=True)
class SnapshotFiles:
    """Whatever is on disk for one fingerprint of an image: a complete snapshot, or leftovers."""

    image: str
    fingerprint: str
    files: tuple[Path, ...]
    snapshot: Snapshot | None  # None: unfinished, or its record unreadable


@dataclass(frozen=True)
class Snapshots:
    wanted: dict[tuple[str, Shape], str | None] = field(default_factory=dict)  # (image, shape) -> inputs' fingerprint
    on_disk: dict[tuple[str, str], SnapshotFiles] = field(default_factory=dict)  # (image, fingerprint) -> files
    failed: dict[tuple[str, str], str] = field(default_factory=dict)  # (image, fingerprint) -> why it was not made

    def ready(self, image: str, shape: Shape) -> Snapshot | None:
        """The snapshot of the image and shape made from today's inputs; an older one is never used."""
        fingerprint = self.wanted.get((image, shape))
        files = self.on_disk.get((image, fingerprint)) if fingerprint else None
        return files.snapshot if files else None


class SnapshotsView(Protocol):
    """What the snapshot planner reads of a pass's observation."""

    @property
    def snapshots(self) -> Snapshots: ...
    @property
    def host(self) -> HostCaps: ...
