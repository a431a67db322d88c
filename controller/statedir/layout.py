"""Where things live in the state directory. Pure path conventions, in one place.

    lock                          the reconciler lock
    instance                      this state directory's identity, carried in every device mark
    host.json                     facts about this host, cached per boot (is KVM usable)
    daemon.json                   the watch daemon's pid and last pass (warmvm get daemon)
    agent.lock                    held by `warmvm agent` while it runs (one agent per state directory)
    fleet/specs/KIND-NAME.yaml    fleet mode: this host's share of the fleet, written by its agent
    ssh/id_ed25519[.pub]          the host's key pair for the guests
    images/IMAGE/seed-FP.ext4     base work seed built from inputs with fingerprint FP
    images/IMAGE/seed-FP-SIZE.ext4   the same seed grown to SIZE bytes (one per disk size in use)
    images/IMAGE/seed.json        the last seed generation (fingerprint, error)
    snapshots/IMAGE/FP.bin        a boot snapshot of IMAGE (QEMU's saved state of a template VM), made from
                                  inputs with fingerprint FP; FP.json its record, written after it
    snapshots/IMAGE/failed.json   fingerprints whose snapshot could not be made, and why
    vms/VM/disk.img               the VM's work disk (qcow2 overlay or raw: see disk.json)
    vms/VM/disk.json              how it was made (image, seed, path taken, format, size)
    vms/VM/vm.json                its IP lease, MAC and current boot
    vms/VM/ssh_host_ed25519_key[.pub], known_hosts   its own SSH host key, and the pin of it
    vms/VM/qemu.pid, qmp.sock, console.log, qemu.log   its QEMU
    vms/VM/ctl.sock               its control channel: QEMU serves it, the guest's agent answers (exec, readiness)
    vms/VM/console.in, console.out       its console's FIFOs (drained into console.log)
    vms/VM/suspend.state          a suspended VM's memory (suspend.state.refused-T: one that did not resume)
    vms/VM/identity               what a VM restored from a snapshot is told it is (fw_cfg), made at each start
    trash/VM.REMOVED/             a removed VM's directory, moved aside whole (disk and lease) at
                                  REMOVED (unix seconds), kept for the retention time
    retries.json                  actions that failed for good: how often in a row, when tried again
    tmp/                          scratch space on the same file system (renamed from); each entry named
                                  NAME.PID.RANDOM after its writer, and removed by a reconcile once that
                                  writer no longer runs, so half-written files never outlive a run
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEED = re.compile(r"^seed-([0-9a-f]{16})(?:-(\d+))?\.ext4$")
SNAPSHOT = re.compile(r"^([0-9a-f]{16})\.(bin|json)$")
TEMPLATE_DIR = "tpl"  # a snapshot template's directory in tmp/: short, as its QMP socket's path must fit 108 bytes
TRASH = re.compile(r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?)\.(\d+)$")


@dataclass(frozen=True)
class VmFiles:
    """One VM's directory and the files its QEMU uses."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.img"

    @property
    def disk_record(self) -> Path:
        return self.directory / "disk.json"

    @property
    def record(self) -> Path:
        return self.directory / "vm.json"

    @property
    def host_key(self) -> Path:
        """The VM's own SSH host key (OpenSSH format), handed to its guest through fw_cfg."""
        return self.directory / "ssh_host_ed25519_key"

    @property
    def host_key_dropbear(self) -> Path:
        """The same key in dropbear's format: what fw_cfg hands the guest."""
        return self.directory / "ssh_host_ed25519_key.dropbear"

    @property
    def known_hosts(self) -> Path:
        """The VM's host key, pinned: what `warmvm ssh` and the readiness probe accept from it."""
        return self.directory / "known_hosts"

    @property
    def identity(self) -> Path:
        return self.directory / "identity"

    @property
    def saved_state(self) -> Path:
        """A suspended VM's memory and devices (QEMU's migration stream), complete once renamed here."""
        return self.directory / "suspend.state"

    def refused_state(self, when: int) -> Path:
        """A saved state that could not be resumed, kept aside for its operator (trashed with the VM)."""
        return self.directory / f"suspend.state.refused-{when}"

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def ctl(self) -> Path:
        """The control channel's host end: a UNIX socket QEMU listens on, one client at a time; its
        guest end is the image's warmvm-agent (a virtio-serial port)."""
        return self.directory / "ctl.sock"

    @property
    def console(self) -> Path:
        return self.directory / "console.log"

    @property
    def console_pipe(self) -> Path:
        """What QEMU's `-chardev pipe` is named: it opens this path's .in and .out FIFOs."""
        return self.directory / "console"

    @property
    def console_fifos(self) -> tuple[Path, Path]:
        """(the console's input, which nobody writes; its output, which the drainer reads)"""
        return self.console_pipe.with_suffix(".in"), self.console_pipe.with_suffix(".out")

    @property
    def log(self) -> Path:
        return self.directory / "qemu.log"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def daemon_status(self) -> Path:
        return self.root / "daemon.json"

    @property
    def retries(self) -> Path:
        """Actions that failed for good, and when each may be tried again (engine/retries.py)."""
        return self.root / "retries.json"

    @property
    def host_facts(self) -> Path:
        return self.root / "host.json"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def fleet_specs(self) -> Path:
        """Fleet mode: this host's share of the fleet, as spec files the agent writes."""
        return self.root / "fleet" / "specs"

    @property
    def agent_lock(self) -> Path:
        return self.root / "agent.lock"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    def trash_entry(self, vm: str, removed_at: int) -> Path:
        return self.trash / f"{vm}.{removed_at}"

    def image_dir(self, image: str) -> Path:
        return self.images / image

    def seed(self, image: str, fingerprint: str, size: int | None = None) -> Path:
        suffix = f"-{size}" if size is not None else ""
        return self.image_dir(image) / f"seed-{fingerprint}{suffix}.ext4"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def snapshot(self, image: str, fingerprint: str) -> tuple[Path, Path]:
        """A snapshot's state file and its record."""
        return (self.snapshots / image / f"{fingerprint}.bin", self.snapshots / image / f"{fingerprint}.json")

    def snapshot_failures(self, image: str) -> Path:
        return self.snapshots / image / "failed.json"

    def seed_record(self, image: str) -> Path:
        return self.image_dir(image) / "seed.json"

    def vm(self, name: str) -> VmFiles:
        return VmFiles(self.vms / name)

    def relative(self, path: Path) -> str:
        """How records name a file of the state directory: relative to its root, so that the
        directory can be reached by any spelling (or moved) without records going stale."""
        return str(path.relative_to(self.root))

    def resolve(self, recorded: str) -> Path:
        """A path a record names (relative; an absolute one from older records stays as it was)."""
        return self.root / recorded
