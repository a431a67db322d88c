"""Reads each VM's record and whether its QEMU is alive and ours."""

from __future__ import annotations

from pathlib import Path

from ..statedir.layout import Layout
from ..statedir.store import read_json
from .qemu import running_pid
from .state import VmRecord, VmState


def read_record(path: Path) -> VmRecord | None:
    data = read_json(path)
    return VmRecord.from_dict(data, str(path)) if data is not None else None


def observe_vms(layout: Layout) -> dict[str, VmState]:
    out = {}
    for vm_dir in sorted(layout.vms.iterdir()) if layout.vms.is_dir() else []:
        files = layout.vm(vm_dir.name)
        record = read_record(files.record)
        if record is None:
            continue
        out[vm_dir.name] = VmState(vm_dir.name, record, alive=running_pid(files, record.pid) is not None)
    return out
