"""Observed seeds and work disks, and the record each work disk keeps. Pure types.

Seed files are complete by construction (built under a temporary name,
checked, renamed), so a listing of the image directory is the truth about
which seeds exist. A disk's record (disk.json) holds what cannot be observed
safely: how it was made and in which format. The format is a fact warmvm
wrote down, never guessed from the disk's first bytes, which its guest
controls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..base import records
from ..base.kinds import CloneMethod, DiskFormat, Taken


@dataclass(frozen=True)
class SeedFiles:
    base: Path | None  # None: only sized seeds are left of this fingerprint (kept while a disk is backed by one)
    size: int
    mtime: float
    sized: dict[int, Path] = field(default_factory=dict)

    def files(self) -> list[Path]:
        return [*([self.base] if self.base else []), *self.sized.values()]


@dataclass(frozen=True)
class ImageState:
    name: str
    inputs: str | None  # fingerprint of the seed's inputs now; None: no seed wanted
    seeds: dict[str, SeedFiles]  # by fingerprint
    failed: dict[str, str]  # fingerprint -> why its generation failed

    def ready(self) -> str | None:
        """The seed to clone from: the current one, else the newest older one still on disk."""
        usable = {fp: seed for fp, seed in self.seeds.items() if seed.base is not None}
        if self.inputs in usable:
            return self.inputs
        older = sorted(usable.items(), key=lambda kv: kv[1].mtime, reverse=True)
        return older[0][0] if older else None


@dataclass(frozen=True, kw_only=True)
class SeedRecord:
    """state/images/IMAGE/seed.json: the image's last seed generation, and why it failed if it did
    (a failed one is not tried again until its inputs change)."""

    LABEL: ClassVar[str] = "seed"

    fingerprint: str
    error: str | None
    time: float
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return records.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> SeedRecord:
        return records.from_dict(cls, data, where)


@dataclass(frozen=True, kw_only=True)
class DiskRecord:
    """state/vms/VM/disk.json: written after the disk file, so a disk without one is unfinished."""

    LABEL: ClassVar[str] = "disk"

    image: str
    size: int
    taken: Taken  # the path the disk took
    format: DiskFormat  # as made
    seed: str | None  # the seed file a qcow2 disk is backed by, relative to the state root
    created: float

    def to_dict(self) -> dict[str, Any]:
        return records.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> DiskRecord:
        if isinstance(data, dict) and not data.get("format"):
            # records from before the format was recorded: the path taken says it (qcow2 only by overlay)
            data = data | {"format": "qcow2" if data.get("taken") == Taken.SEED_QCOW2 else "raw"}
        return records.from_dict(cls, data, where)


@dataclass(frozen=True)
class DiskState:
    vm: str
    path: Path
    record: DiskRecord
    seed: Path | None  # the seed file a qcow2 disk is backed by (it must outlive the disk)
    allocated: int = 0  # bytes its file takes on the file system now (its blocks; a qcow2 disk's seed aside)

    @property
    def image(self) -> str:
        return self.record.image

    @property
    def size(self) -> int:
        return self.record.size

    @property
    def taken(self) -> Taken:
        return self.record.taken

    @property
    def format(self) -> DiskFormat:
        return self.record.format


@dataclass(frozen=True)
class StateSpace:
    """The state directory's file system, as statvfs tells it."""

    size: int  # all its blocks
    free: int  # the blocks an unprivileged writer may still take: QEMU writes a guest's disk as the VM's own uid


class Trashed(Protocol):
    """What the disk budget reads of a trashed disk coming back with its VM."""

    @property
    def disk(self) -> DiskRecord | None: ...
    @property
    def size(self) -> int: ...  # bytes the trash entry takes on the file system


class DisksView(Protocol):
    """What the disk and seed planners read of a pass's observation."""

    @property
    def images(self) -> Mapping[str, ImageState]: ...
    @property
    def disks(self) -> Mapping[str, DiskState]: ...
    @property
    def clone_method(self) -> CloneMethod: ...
    @property
    def running(self) -> frozenset[str]: ...  # VMs whose QEMU is alive: their disks are left alone
    @property
    def broken_vms(self) -> frozenset[str]: ...  # VMs whose records cannot be read
    @property
    def trash_seeds(self) -> frozenset[Path]: ...  # seeds backing a trashed disk

    @property
    def space(self) -> StateSpace | None: ...  # None: not observed, so work disks are not budgeted

    def restorable(self, vm: str, retention: float) -> Trashed | None: ...  # its trashed disk comes back
