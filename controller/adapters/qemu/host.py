"""What this host offers QEMU: whether KVM really works (probed once per host boot, cached in the
state directory) and the TSC rate a TCG guest is told."""

from __future__ import annotations

import fcntl
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ...base import records
from ...base.errors import WarmvmError
from ...statedir.layout import Layout
from ...statedir.store import read_json, write_json

KVM_GET_API_VERSION, KVM_CREATE_VM = 0xAE00, 0xAE01


@dataclass(frozen=True)
class KvmProbe:
    """state/host.json: whether KVM was usable, for the host boot and kernel that `key` names."""

    LABEL = "host facts"
    key: str
    kvm: bool


def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz. Under TCG the guest's TSC runs at it, and a guest left to
    calibrate against the emulated PIT hangs in most boots ("Unable to calibrate against PIT")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError, IndexError):
        pass
    return None


def kvm_usable_cached(layout: Layout, write: bool) -> bool:
    """`kvm_usable`, probed once per host boot; the result kept in the state directory if `write`."""
    key = f"{platform.release()}|{_boot_id()}"
    try:
        data = read_json(layout.host_facts)
        if data is not None and (cached := records.from_dict(KvmProbe, data, str(layout.host_facts))).key == key:
            return cached.kvm
    except WarmvmError:
        pass  # probed again and written anew
    usable = kvm_usable()
    if write:
        write_json(layout.host_facts, records.to_dict(KvmProbe(key, usable)), layout.tmp)
    return usable


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return str(os.getpid())


def kvm_usable() -> bool:
    """KVM that can run a stock guest kernel: /dev/kvm answering, and hardware virtualisation in the CPU.

    A /dev/kvm that exists is no proof: under PVM (a host that is itself a
    guest) it creates VMs, but Debian's kernel hangs in them, and the CPU
    shows no vmx/svm flag.
    """
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != 12:
            return False
        os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
    except OSError:
        return False
    finally:
        os.close(fd)
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return " vmx" in flags or " svm" in flags
