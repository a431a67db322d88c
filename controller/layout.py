"""Where things live in the state directory. Pure path conventions, one place.

    lock                          the reconciler lock
    ssh/id_ed25519[.pub]          the host's key pair for the guests
    images/IMAGE/seed-FP.ext4     base work seed built from inputs with fingerprint FP
    images/IMAGE/seed-FP-SIZE.ext4   the same seed grown to SIZE bytes (one per disk size in use)
    images/IMAGE/seed.json        the last seed generation (fingerprint, error)
    vms/VM/disk.img               the VM's work disk (qcow2 overlay or raw: see disk.json)
    vms/VM/disk.json              how it was made (image, seed, path taken, size)
    vms/VM/vm.json                its IP lease, MAC and current boot
    vms/VM/qemu.pid, qmp.sock, console.log   its QEMU
    tmp/                          scratch space on the same file system (renamed from)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEED = re.compile(r"^seed-([0-9a-f]{16})(?:-(\d+))?\.ext4$")


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    def image_dir(self, image: str) -> Path:
        return self.root / "images" / image

    def seed(self, image: str, fingerprint: str, size: int | None = None) -> Path:
        suffix = f"-{size}" if size is not None else ""
        return self.image_dir(image) / f"seed-{fingerprint}{suffix}.ext4"

    def seed_record(self, image: str) -> Path:
        return self.image_dir(image) / "seed.json"

    def vm_dir(self, vm: str) -> Path:
        return self.root / "vms" / vm

    def disk(self, vm: str) -> Path:
        return self.vm_dir(vm) / "disk.img"

    def disk_record(self, vm: str) -> Path:
        return self.vm_dir(vm) / "disk.json"

    def vm_record(self, vm: str) -> Path:
        return self.vm_dir(vm) / "vm.json"
