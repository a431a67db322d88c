"""Observed VM runtime: each VM's record plus whether its QEMU is alive and ours. Pure types.

The record (state/vms/VM/vm.json) holds what cannot be observed: the IP lease,
the MAC, when the VM was first seen, and the current boot (pid, start, when
SSH first answered, failed attempts). Whether QEMU runs is always observed
(observe.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..core.errors import PermanentError

BOOT_ATTEMPTS = 3  # boots that never answer SSH before a VM is Failed (until its spec changes)


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
    boot: str | None = None  # how the current boot began: cold | restore
    snapshot: str | None = None  # the snapshot (fingerprint) the current boot was restored from
    restore_failed: str | None = None  # the snapshot (fingerprint) a restore of this VM failed from: not tried again

    def with_(self, **changes: Any) -> VmRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> VmRecord:
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise PermanentError(f"{where}: not a VM record ({e})") from None


@dataclass(frozen=True)
class VmState:
    name: str
    record: VmRecord
    alive: bool

    @property
    def ready(self) -> bool:
        return self.alive and self.record.ready is not None
