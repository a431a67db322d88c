"""The VM driver: VM actions through QEMU (qemu.py), the guest's channel and SSH (readiness.py),
plus the VM's record.

Each handler reads the record, acts, and writes the record back atomically.
A VM starts on the TAP and disk format its action names (never guessed from
the disk's content). A boot that never gets ready is killed here (its QEMU
would otherwise hold a core forever under TCG) and counted; the planner
starts it again, up to BOOT_ATTEMPTS, with the runner's backoff in between.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters import qemu, ssh
from ..adapters.qemu import Machine
from ..base.actions import Details, Handlers
from ..base.errors import PermanentError, TemporaryError, backoff
from ..base.kinds import BootMode, DiskFormat
from ..disks.observe import read_disk_record
from ..statedir.layout import SEED, Layout, VmFiles
from ..statedir.store import atomic_write, fsync_dir, scratch_prefix, write_json
from .actions import (
    IpAssign,
    TrashExpire,
    VmAwait,
    VmContinue,
    VmExited,
    VmForget,
    VmRestore,
    VmStart,
    VmStop,
    VmSuspend,
    VmTrash,
)
from .observe import read_record
from .readiness import await_ready
from .restore import Restorer, restored
from .state import BOOT_ATTEMPTS, STABLE_RUN, VmRecord, VmsView, restart_delay
from .suspend import Suspender


@dataclass
class VmDriver:
    layout: Layout
    boot_timeout: float = 60.0
    stop_timeout: float = 3.0
    restorer: Restorer = field(init=False)
    suspender: Suspender = field(init=False)

    def __post_init__(self) -> None:
        self.restorer = Restorer(self.layout, self.boot_timeout, self._save)
        self.suspender = Suspender(self.layout, self.boot_timeout, self._save, self.restorer.snapshot_machine)

    def handlers(self) -> Handlers:
        return {IpAssign: self.ip_assign, VmStart: self.vm_start, VmAwait: self.vm_await, VmStop: self.vm_stop,
                VmForget: self.vm_forget, VmTrash: self.vm_trash, VmRestore: self.vm_restore,
                TrashExpire: self.trash_expire, VmExited: self.vm_exited, VmSuspend: self.suspender.suspend,
                VmContinue: self.suspender.abort}

    def prepare(self, observed: VmsView) -> None:
        """A pass starts: every running guest's console is drained into its bounded log."""
        for name, state in observed.vms.items():
            qemu.console.keep_bounded(self.files(name), state.pid)

    def close(self) -> None:
        pass

    def _backing(self, vm: str, fmt: DiskFormat) -> Path | None:
        """A qcow2 disk's seed, as its record names it, and only if it is a seed file of this state
        directory: the chain warmvm wrote, checked, never the one the disk's header may claim."""
        if fmt != DiskFormat.QCOW2:
            return None
        record = read_disk_record(self.files(vm).disk_record)
        if record is None or record.format != DiskFormat.QCOW2 or not record.seed:
            raise PermanentError(f"vm/{vm}: its qcow2 disk has no recorded seed")
        seed = Path(os.path.realpath(self.layout.resolve(record.seed)))
        if seed.parent.parent != Path(os.path.realpath(self.layout.images)) or not SEED.match(seed.name):
            raise PermanentError(f"vm/{vm}: recorded seed {record.seed!r} is not a seed of {self.layout.root}")
        return seed

    def files(self, vm: str) -> VmFiles:
        return self.layout.vm(vm)

    def _record(self, vm: str) -> VmRecord:
        record = read_record(self.files(vm).record)
        if record is None:
            raise TemporaryError(f"vm/{vm}: no record yet")
        return record

    def _save(self, vm: str, record: VmRecord) -> None:
        """Durable, boot state too: a power cut must never leave a torn or empty record."""
        write_json(self.files(vm).record, record.to_dict(), self.layout.tmp)

    def ip_assign(self, a: IpAssign) -> Details:
        old = read_record(self.files(a.vm).record)
        created = old.created if old else time.time()
        self.files(a.vm).directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._host_key(a.vm)
        uid = old.uid if old and old.uid is not None else a.uid
        self._save(a.vm, VmRecord(network=a.network, ip=str(a.ip), mac=qemu.mac_for(a.vm), created=created, uid=uid))
        return {"ip": str(a.ip), "uid": uid}

    def _host_key(self, vm: str) -> None:
        """The VM's own SSH host key, made once at provisioning (the image holds none) and pinned in its
        known_hosts: made in the tmp area, the pin renamed into place last."""
        files = self.files(vm)
        if files.host_key.exists() and files.known_hosts.exists():
            if not files.host_key_dropbear.exists():  # VMs whose guests converted the key themselves
                atomic_write(files.host_key_dropbear, ssh.dropbear_key(files.host_key.read_text()), self.layout.tmp)
            return
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.layout.tmp, prefix=scratch_prefix("key")) as tmp:
            try:
                made = ssh.keygen(Path(tmp), ssh.host_alias(vm))
            except PermanentError as e:
                raise PermanentError(f"vm/{vm}: {e}") from None
            kind, blob = made.with_suffix(".pub").read_text().split()[:2]
            atomic_write(files.host_key_dropbear, ssh.dropbear_key(made.read_text()), self.layout.tmp)
            made.replace(files.host_key)
            made.with_suffix(".pub").replace(files.host_key.with_suffix(".pub"))
        atomic_write(files.known_hosts, f"{ssh.host_alias(vm)} {kind} {blob}\n".encode(), self.layout.tmp)

    def pin(self, vm: str) -> ssh.Pin:
        return self.files(vm).known_hosts, ssh.host_alias(vm)

    def vm_start(self, a: VmStart) -> Details:
        if a.tap is None or a.disk_format is None:
            raise TemporaryError(f"vm/{a.vm}: its TAP or work disk is not ready")
        if not a.uid:
            raise PermanentError(f"vm/{a.vm}: no uid of its own to run QEMU as")
        record = self._record(a.vm)
        files = self.files(a.vm)
        # a QEMU no pid file names can only exist if a start was ever recorded (the intent precedes the spawn)
        running = qemu.running_pid(files, record.pid) or (qemu.find_untracked(files) if record.started else None)
        if running is not None:  # spawned by a run killed before it could record it: tracked from now on
            self._save(a.vm, record.with_(pid=running))
            return {"pid": running, "adopted": True}
        self._host_key(a.vm)  # VMs provisioned before host keys were their own get theirs now
        machine = Machine(name=a.vm, kernel=a.image.kernel, initrd=a.image.initrd, rootfs=a.image.rootfs,
                          disk=files.disk, disk_format=a.disk_format, backing=self._backing(a.vm, a.disk_format),
                          tap=a.tap, mac=record.mac, address=a.address, gateway=str(a.gateway), vcpus=a.vcpus,
                          memory=a.memory, accel=a.accel, host_key=files.host_key_dropbear, tsc_khz=a.tsc_khz,
                          uid=a.uid)
        # intent first: the record says a boot is starting before QEMU exists; QEMU's own pid file
        # then finds it, whenever this process dies
        starting = record.with_(pid=None, started=time.time(), accel=a.accel, ready=None, readiness=None,
                                boots=record.boots + 1, spec=a.spec, boot=BootMode.COLD,
                                snapshot=record.snapshot if a.resume else None, retry_at=None,
                                **({} if a.resume else {"saved": None, "saved_at": None, "saved_on": None}),
                                exits=record.exits if a.spec == record.spec else 0, uid=a.uid)
        details = {"accel": a.accel, "tap": a.tap, "restart": record.boots > 0 or None}
        if a.resume:
            return details | {"pid": self.suspender.spawn(a, machine, starting), "boot": "resume"}
        self.suspender.put_aside(a.vm)  # a state it may have saved is never resumed after a boot of another kind
        if a.snapshot is not None:
            pid = self.restorer.spawn(a, machine, starting)
            return details | {"pid": pid, "boot": "restore", "snapshot": str(a.snapshot)}
        self._save(a.vm, starting)
        pid = qemu.start(machine, files)
        self._save(a.vm, starting.with_(pid=pid))
        return details | {"pid": pid, "boot": "cold", "cold_because": a.cold_because}

    def vm_await(self, a: VmAwait) -> Details:
        record = self._record(a.vm)
        files = self.files(a.vm)
        loading: Details = {}
        if self.restorer.waiting(record, a.snapshot):
            assert a.snapshot is not None
            loading = self.restorer.load(a.vm, a.snapshot, record)  # spawned by this pass's start
        elif self.suspender.waiting(record, a.resume):
            loading = self.suspender.load(a.vm, record)
        elif record.boot == BootMode.RESUME and self.suspender.run_loaded(a.vm, record):
            record = self._record(a.vm)  # a resume cut short once QEMU had its state: it runs now
        elif record.boot in (BootMode.RESTORE, BootMode.RESUME) and not restored(files):
            # the run that started it was killed before QEMU had its state: it would wait forever
            qemu.kill(files, record.pid)
            self._save(a.vm, record.with_(pid=None, ready=None))
            raise TemporaryError(f"vm/{a.vm}: its restore was cut short (QEMU never got its state): restored again",
                                 delay=0.0)
        started = record.started or time.time()
        deadline = time.monotonic() + max(0.0, started + self.boot_timeout - time.time())
        timeline = ssh.Timeline(files.console, started)
        ready, why = await_ready(files, self.layout.ssh_key, str(a.ip), deadline, timeline,
                                 lambda: qemu.running_pid(files, record.pid) is not None, self.pin(a.vm))
        current = read_record(files.record)
        if current is None or current.started != record.started:
            # in the daemon this wait runs beside the passes: the boot it waited for was stopped or
            # replaced meanwhile, and its record is no longer this wait's to write
            return {"superseded": True}
        if ready:
            if record.boot == BootMode.RESUME:
                loading["clock_behind_s"] = self.suspender.set_clock(a.vm)
            now = time.time()
            first = current.create_to_ready_ms is None
            create_to_ready = (now - current.created) * 1000 if first else current.create_to_ready_ms
            self._save(a.vm, current.with_(ready=now, attempts=0, failure=None, create_to_ready_ms=create_to_ready,
                                           readiness=ready))
            return {"boot_ms": round((now - started) * 1000, 1),
                    "create_to_ready_ms": round(create_to_ready, 1) if first and create_to_ready else None,
                    "readiness": ready, "ssh_because": why, "timeline": timeline.done(ready), **loading}
        return self._failed_boot(a.vm, current, files)

    def _failed_boot(self, vm: str, record: VmRecord, files: VmFiles) -> Details:
        died = qemu.running_pid(files, record.pid) is None
        qemu.kill(files, record.pid)
        tail = qemu.console.tail(files, 1)
        if died:
            reason = f"QEMU exited: {qemu.failure_reason(files) or 'no message'}"
        else:
            reason = (f"not ready within {self.boot_timeout:g}s (no SSH, no ready status over its channel); "
                      + (f"console: {tail}" if tail else "console is empty"))
        attempts = record.attempts + 1
        restore_failed = record.snapshot if record.boot == BootMode.RESTORE else record.restore_failed
        delay = backoff(attempts, base=2.0)
        self._save(vm, record.with_(pid=None, ready=None, attempts=attempts, failure=reason,
                                    restore_failed=restore_failed, retry_at=time.time() + delay))
        if attempts >= BOOT_ATTEMPTS:
            raise PermanentError(f"boot failed {attempts} times, giving up: {reason}")
        raise TemporaryError(f"boot {attempts} of {BOOT_ATTEMPTS} failed: {reason}", delay=delay)

    def vm_exited(self, a: VmExited) -> Details:
        """Counts an exit the VM was not asked for, and sets when it may start again."""
        record = self._record(a.vm)
        files = self.files(a.vm)
        if qemu.running_pid(files, record.pid) is not None:
            raise TemporaryError(f"vm/{a.vm}: its QEMU runs after all", delay=0.0)
        now = time.time()
        ran = max(0.0, now - (record.ready or now))
        exits = 1 if ran >= STABLE_RUN else record.exits + 1
        delay = restart_delay(exits)
        why = qemu.failure_reason(files)
        self._save(a.vm, record.with_(pid=None, ready=None, exits=exits, retry_at=now + delay,
                                      failure=f"exited {ran:.0f}s after it was ready" + (f": {why}" if why else "")))
        return {"exits": exits, "ran_s": round(ran, 1), "next_start_s": delay}

    def vm_stop(self, a: VmStop) -> Details:
        record = read_record(self.files(a.vm).record)
        how = qemu.stop(self.files(a.vm), record.pid if record else None, self.stop_timeout)
        if record is not None:
            self._save(a.vm, record.with_(pid=None, ready=None))
        return {"reason": a.reason, "how": how}

    def vm_forget(self, a: VmForget) -> Details:
        self._never_running(a.vm)
        shutil.rmtree(self.files(a.vm).directory, ignore_errors=True)
        return {}

    def vm_trash(self, a: VmTrash) -> Details:
        """One rename: the disk and the lease go aside together, or not at all."""
        self._never_running(a.vm)
        removed_at = int(time.time())
        while self.layout.trash_entry(a.vm, removed_at).exists():
            removed_at += 1
        entry = self.layout.trash_entry(a.vm, removed_at)
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(self.files(a.vm).directory, entry)
        fsync_dir(entry.parent)
        fsync_dir(self.layout.vms)
        return {"to": self.layout.relative(entry)}

    def vm_restore(self, a: VmRestore) -> Details:
        entry = self.layout.trash_entry(a.vm, a.removed_at)
        home = self.files(a.vm).directory
        if home.exists():
            if any(p.name in ("vm.json", "disk.json", "disk.img") for p in home.iterdir()):
                raise PermanentError(f"vm/{a.vm}: {home} holds a VM already; {entry} is left in the trash")
            shutil.rmtree(home)  # only leftovers of an unfinished start (logs)
        home.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(entry, home)
        fsync_dir(home.parent)
        record = read_record(self.files(a.vm).record)
        if a.ip is None:
            self.files(a.vm).record.unlink(missing_ok=True)  # no address free: leased when one is
        elif record is None or record.network != a.network or record.ip != str(a.ip):
            created = record.created if record else time.time()
            self._save(a.vm, VmRecord(network=a.network, ip=str(a.ip), mac=qemu.mac_for(a.vm), created=created,
                                      uid=record.uid if record else None))
        elif record.pid is not None or record.ready is not None:
            self._save(a.vm, record.with_(pid=None, ready=None))
        return {"ip": str(a.ip) if a.ip else None, "from": self.layout.relative(entry)}

    def trash_expire(self, a: TrashExpire) -> Details:
        shutil.rmtree(self.layout.trash_entry(a.vm, a.removed_at))
        return {}

    def _never_running(self, vm: str) -> None:
        """Never move or remove a VM's files under a QEMU that still uses them."""
        files = self.files(vm)
        pid = qemu.running_pid(files) or qemu.find_untracked(files)
        if pid is not None:
            raise TemporaryError(f"vm/{vm}: its QEMU (pid {pid}) is still running")
