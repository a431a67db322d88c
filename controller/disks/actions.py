"""Disk actions: work seeds built, sized and freed; VM work disks cloned, built, grown, deleted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..base.actions import PHASE_CLEANUP, PHASE_WARM, Action
from ..base.kinds import CloneMethod, DiskFormat
from ..base.model import Image


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
    step: ClassVar[int] = 2
    vm: str
    image: Image
    fingerprint: str
    size: int
    method: CloneMethod

    @property
    def format(self) -> DiskFormat:
        """The disk's format once made: a fact recorded, never probed from the disk's content."""
        return DiskFormat.QCOW2 if self.method == CloneMethod.QCOW2 else DiskFormat.RAW


@dataclass(frozen=True)
class DiskScratch(Action):
    """The slow path: a new ext4 of the disk's size, filled with the image's /root."""

    kind: ClassVar[str] = "disk_scratch"
    step: ClassVar[int] = 2
    format: ClassVar[DiskFormat] = DiskFormat.RAW
    vm: str
    image: Image
    size: int


@dataclass(frozen=True)
class DiskGrow(Action):
    """Grow a stopped VM's disk; a qcow2 overlay is flattened to raw on the way."""

    kind: ClassVar[str] = "disk_grow"
    step: ClassVar[int] = 2
    format: ClassVar[DiskFormat] = DiskFormat.RAW
    vm: str
    size: int


@dataclass(frozen=True)
class DiskDelete(Action):
    kind: ClassVar[str] = "disk_delete"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str
