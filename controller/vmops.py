"""Applying VM actions: the VMM and SSH drivers plus the VM's record.

Each handler reads the record, acts, and writes the record back atomically.
A boot that never answers SSH is killed here (its QEMU would otherwise hold
a core forever under TCG) and counted; the planner starts it again, up to
BOOT_ATTEMPTS, with the runner's backoff in between.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ssh, vmm
from .actions import IpAssign, VmAwait, VmForget, VmStart, VmStop
from .disks import disk_format
from .errors import PermanentError, TemporaryError
from .layout import Layout
from .netlink import NetlinkDriver
from .store import atomic_write
from .vmm import Machine, VmFiles
from .vms import BOOT_ATTEMPTS
from .vmstate import VmRecord, read_record, write_record

Details = dict[str, Any]


@dataclass
class VmOps:
    layout: Layout
    net: NetlinkDriver
    boot_timeout: float = 60.0
    stop_timeout: float = 3.0

    def files(self, vm: str) -> VmFiles:
        return VmFiles(self.layout.vm_dir(vm))

    def _record(self, vm: str) -> VmRecord:
        record = read_record(self.layout.vm_record(vm))
        if record is None:
            raise TemporaryError(f"vm/{vm}: no record yet")
        return record

    def _save(self, vm: str, record: VmRecord, durable: bool = False) -> None:
        """Boot state is not fsynced (it dies with the machine); the IP lease is."""
        write_record(self.layout.vm_record(vm), record, durable)

    def ip_assign(self, a: IpAssign) -> Details:
        old = read_record(self.layout.vm_record(a.vm))
        created = old.created if old else time.time()
        self.layout.vm_dir(a.vm).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._save(a.vm, VmRecord(a.network, str(a.ip), vmm.mac_for(a.vm), created), durable=True)
        return {"ip": str(a.ip)}

    def vm_start(self, a: VmStart) -> Details:
        record = self._record(a.vm)
        disk = self._disk(a.vm)
        tap = self.net.tap_of(a.vm)
        accel = self._accel(a.accel)
        machine = Machine(a.vm, a.image.kernel, a.image.initrd, a.image.rootfs, Path(disk["path"]),
                          _format(Path(disk["path"])), tap, record.mac, a.address, str(a.gateway),
                          a.vcpus, a.memory, accel, vmm.host_tsc_khz())
        pid = vmm.start(machine, self.files(a.vm))
        self._save(a.vm, record.with_(pid=pid, started=time.time(), accel=accel, ready=None,
                                      boots=record.boots + 1, spec=a.spec))
        return {"accel": accel, "tap": tap, "pid": pid, "restart": record.boots > 0 or None}

    def vm_await(self, a: VmAwait) -> Details:
        record = self._record(a.vm)
        files = self.files(a.vm)
        started = record.started or time.time()
        deadline = time.monotonic() + max(0.0, started + self.boot_timeout - time.time())
        if ssh.wait_ready(self.layout.ssh_key, str(a.ip), deadline,
                          lambda: vmm.running_pid(files, record.pid) is not None):
            now = time.time()
            first = record.create_to_ready_ms is None
            create_to_ready = (now - record.created) * 1000 if record.create_to_ready_ms is None \
                else record.create_to_ready_ms
            self._save(a.vm, record.with_(ready=now, attempts=0, failure=None, create_to_ready_ms=create_to_ready))
            return {"boot_ms": round((now - started) * 1000, 1),
                    "create_to_ready_ms": round(create_to_ready, 1) if first else None}
        return self._failed_boot(a.vm, record, files)

    def _failed_boot(self, vm: str, record: VmRecord, files: VmFiles) -> Details:
        died = vmm.running_pid(files, record.pid) is None
        vmm.kill(files, record.pid)
        tail = vmm.console_tail(files, 1)
        if died:
            reason = f"QEMU exited: {vmm.failure_reason(files) or 'no message'}"
        else:
            reason = f"no SSH within {self.boot_timeout:g}s; " + (f"console: {tail}" if tail else "console is empty")
        attempts = record.attempts + 1
        self._save(vm, record.with_(pid=None, ready=None, attempts=attempts, failure=reason))
        if attempts >= BOOT_ATTEMPTS:
            raise PermanentError(f"boot failed {attempts} times, giving up: {reason}")
        raise TemporaryError(f"boot {attempts} of {BOOT_ATTEMPTS} failed: {reason}", delay=min(2.0 ** attempts, 10))

    def vm_stop(self, a: VmStop) -> Details:
        record = read_record(self.layout.vm_record(a.vm))
        how = vmm.stop(self.files(a.vm), record.pid if record else None, self.stop_timeout)
        if record is not None:
            self._save(a.vm, record.with_(pid=None, ready=None))
        return {"reason": a.reason, "how": how}

    def vm_forget(self, a: VmForget) -> Details:
        record = read_record(self.layout.vm_record(a.vm))
        vmm.kill(self.files(a.vm), record.pid if record else None)  # never leave a QEMU without its files
        shutil.rmtree(self.layout.vm_dir(a.vm), ignore_errors=True)
        return {}

    def _disk(self, vm: str) -> dict[str, Any]:
        try:
            return json.loads(self.layout.disk_record(vm).read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise TemporaryError(f"vm/{vm}: its work disk is not ready") from None

    def _accel(self, wanted: str) -> str:
        usable = self._kvm_usable()
        if wanted == "kvm" and not usable:
            raise PermanentError("accel: kvm was asked for, but KVM is not usable on this host")
        if wanted == "auto":
            return "kvm" if usable else "tcg"
        return wanted

    def _kvm_usable(self) -> bool:
        """Detected once per host boot and cached in the state directory."""
        cache = self.layout.root / "host.json"
        key = f"{platform.release()}|{_boot_id()}"
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return bool(data["kvm"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        usable = vmm.kvm_usable()
        atomic_write(cache, json.dumps({"key": key, "kvm": usable}).encode())
        return usable


def _format(path: Path) -> str:
    return disk_format(path).value


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return str(os.getpid())
