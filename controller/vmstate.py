"""Observed VM runtime: each VM's record plus whether its QEMU is alive and ours.

The record (state/vms/VM/vm.json) holds what cannot be observed: the IP lease,
the MAC, when the VM was first seen, and the current boot (pid, start, when
SSH first answered, failed attempts). Whether QEMU runs is always observed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .layout import Layout
from .store import read_json, write_json
from .vmm import VmFiles, running_pid


@dataclass(frozen=True)
class VmRecord:
    network: str
    ip: str
    mac: str
    created: float  # when the VM was first provisioned: the start of its create-to-ready time
    spec: str = ""  # hash of what the current boot was started with (restart when it changes)
    pid: int | None = None
    started: float | None = None
    accel: str | None = None
    ready: float | None = None
    boots: int = 0
    attempts: int = 0  # consecutive boots that never answered SSH
    failure: str | None = None
    create_to_ready_ms: float | None = None

    def with_(self, **changes: object) -> VmRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VmState:
    name: str
    record: VmRecord
    alive: bool

    @property
    def ready(self) -> bool:
        return self.alive and self.record.ready is not None


def read_record(path: Path) -> VmRecord | None:
    data = read_json(path)
    if data is None:
        return None
    return VmRecord(**{k: v for k, v in data.items() if k in VmRecord.__dataclass_fields__})


def write_record(path: Path, record: VmRecord, durable: bool = True) -> None:
    """`durable=False` for boot state (pid, readiness): it means nothing after the machine crashes."""
    write_json(path, asdict(record), durable)


def observe_vms(layout: Layout) -> dict[str, VmState]:
    out = {}
    root = layout.root / "vms"
    for vm_dir in sorted(root.iterdir()) if root.is_dir() else []:
        record = read_record(layout.vm_record(vm_dir.name))
        if record is None:
            continue
        alive = running_pid(VmFiles(vm_dir), record.pid) is not None
        out[vm_dir.name] = VmState(vm_dir.name, record, alive=alive)
    return out
