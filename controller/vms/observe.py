"""Reads each VM's record, whether its QEMU is alive and ours, and the trash of removed VMs.

A record that cannot be read (torn, empty, not JSON) affects only its own VM:
it is reported under `broken`, with its file named, and the planners leave
that VM alone until an operator looks; every other VM goes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..adapters.qemu import running_pid
from ..base.errors import WarmvmError
from ..base.kinds import Ref
from ..disks.state import DiskRecord
from ..statedir.layout import TRASH, Layout
from ..statedir.store import read_json
from .state import TrashEntry, VmRecord, VmState

T = TypeVar("T")


def read_record(path: Path) -> VmRecord | None:
    data = read_json(path)
    return VmRecord.from_dict(data, str(path)) if data is not None else None


def observe_vms(layout: Layout, broken: dict[str, str]) -> dict[str, VmState]:
    """Every VM with a record; a VM whose record cannot be read goes into `broken` instead."""
    out = {}
    for vm_dir in sorted(layout.vms.iterdir()) if layout.vms.is_dir() else []:
        files = layout.vm(vm_dir.name)
        try:
            record = read_record(files.record)
        except WarmvmError as e:
            broken[str(Ref.vm(vm_dir.name))] = str(e)
            continue
        if record is None:
            continue
        pid = running_pid(files, record.pid)
        out[vm_dir.name] = VmState(vm_dir.name, record, alive=pid is not None, pid=pid,
                                   saved_size=_file_size(files.saved_state))
    return out


def observe_trash(layout: Layout) -> tuple[TrashEntry, ...]:
    entries = []
    for path in sorted(layout.trash.iterdir()) if layout.trash.is_dir() else []:
        m = TRASH.match(path.name)
        if m is None or not path.is_dir():
            continue
        record, disk = _quietly(read_record, path / "vm.json"), _quietly(_disk, path)
        seed = layout.resolve(disk.seed) if disk is not None and disk.seed else None
        entries.append(TrashEntry(m.group(1), int(m.group(3)), path, record, disk, seed, _size(path)))
    return tuple(entries)


def _disk(entry: Path) -> DiskRecord | None:
    data = read_json(entry / "disk.json")
    return DiskRecord.from_dict(data, str(entry / "disk.json")) if data is not None else None


def _quietly(read: Callable[[Path], T | None], path: Path) -> T | None:
    """A trash entry's records are shown if readable; an unreadable one is still kept and expired."""
    try:
        return read(path)
    except WarmvmError:
        return None


def _file_size(path: Path) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _size(directory: Path) -> int:
    total = 0
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total
