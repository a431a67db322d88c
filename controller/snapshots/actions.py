"""Snapshot actions: a template booted and saved, and snapshots nothing uses any more freed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..base.actions import PHASE_CLEANUP, PHASE_WARM, Action
from ..base.kinds import Accel
from ..base.model import Image
from .state import Shape


@dataclass(frozen=True)
class SnapshotGenerate(Action):
    """Boot a template VM of the image in this shape up to the point before it takes an identity,
    and save it."""

    kind: ClassVar[str] = "snapshot_generate"
    about: ClassVar[tuple[str, str]] = ("image", "image")
    phase: ClassVar[int] = PHASE_WARM
    image: Image
    shape: Shape
    fingerprint: str
    accel: Accel  # the shape's, as resolved for this host
    tsc_khz: int | None  # what a TCG template is told its TSC runs at (its copies are told the same)


@dataclass(frozen=True)
class SnapshotDelete(Action):
    kind: ClassVar[str] = "snapshot_delete"
    about: ClassVar[tuple[str, str]] = ("image", "image")
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    image: str
    fingerprint: str
    files: tuple[Path, ...]
