"""Observed seeds and work disks, and the record each work disk keeps. Pure types.

Seed files are complete by construction (built under a temporary name,
checked, renamed), so a listing of the image directory is the truth about
which seeds exist. A disk's record (disk.json) holds what cannot be observed
safely: how it was made and in which format. The format is a fact warmvm
wrote down, never guessed from the disk's first bytes, which its guest
controls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import PermanentError


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


TAKEN = ("seed:qcow2", "seed:reflink", "seed:sparse", "scratch")
FORMATS = ("raw", "qcow2")


@dataclass(frozen=True)
class DiskRecord:
    """state/vms/VM/disk.json: written after the disk file, so a disk without one is unfinished."""

    image: str
    size: int
    taken: str  # one of TAKEN: the path the disk took
    format: str  # raw | qcow2, as made
    seed: str | None  # the seed file a qcow2 disk is backed by, relative to the state root
    created: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> DiskRecord:
        try:
            taken = str(data["taken"])
            # records from before the format was recorded: the path taken says it (qcow2 only by overlay)
            fmt = str(data.get("format") or ("qcow2" if taken == "seed:qcow2" else "raw"))
            record = cls(str(data["image"]), int(data["size"]), taken, fmt,
                         str(data["seed"]) if data.get("seed") else None, float(data["created"]))
        except (KeyError, TypeError, ValueError) as e:
            raise PermanentError(f"{where}: not a disk record ({e})") from None
        if record.taken not in TAKEN or record.format not in FORMATS:
            raise PermanentError(f"{where}: not a disk record (taken {record.taken!r}, format {record.format!r})")
        return record


@dataclass(frozen=True)
class DiskState:
    vm: str
    path: Path
    record: DiskRecord
    seed: Path | None  # the seed file a qcow2 disk is backed by (it must outlive the disk)

    @property
    def image(self) -> str:
        return self.record.image

    @property
    def size(self) -> int:
        return self.record.size

    @property
    def taken(self) -> str:
        return self.record.taken

    @property
    def format(self) -> str:
        return self.record.format
