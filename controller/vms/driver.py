"""The VM driver: VM actions through QEMU (qemu.py) and SSH (ssh.py), plus the VM's record.

Each handler reads the record, acts, and writes the record back atomically.
A VM starts on the TAP and disk format its action names (never guessed from
the disk's content). A boot that never answers SSH is killed here (its QEMU
would otherwise hold a core forever under TCG) and counted; the planner
starts it again, up to BOOT_ATTEMPTS, with the runner's backoff in between.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.actions import Details, Handlers
from ..core.errors import PermanentError, TemporaryError, backoff
from ..core.state import Observed
from ..disks.observe import read_disk_record
from ..snapshots.state import Snapshot
from ..statedir.layout import SEED, Layout, VmFiles
from ..statedir.store import atomic_write, fsync_dir, sha256, write_json
from . import qemu, ssh
from .actions import IpAssign, TrashExpire, VmAwait, VmForget, VmRestore, VmStart, VmStop, VmTrash
from .observe import read_record
from .qemu import Machine
from .state import BOOT_ATTEMPTS, VmRecord


@dataclass
class VmDriver:
    layout: Layout
    boot_timeout: float = 60.0
    stop_timeout: float = 3.0
    # snapshot files whose digest this process checked: (path, inode, size, mtime, ctime)
    _verified: set[tuple[str, int, int, int, int]] = field(default_factory=set)
    _hashing: threading.Lock = field(default_factory=threading.Lock)

    def handlers(self) -> Handlers:
        return {IpAssign: self.ip_assign, VmStart: self.vm_start, VmAwait: self.vm_await, VmStop: self.vm_stop,
                VmForget: self.vm_forget, VmTrash: self.vm_trash, VmRestore: self.vm_restore,
                TrashExpire: self.trash_expire}

    def prepare(self, observed: Observed) -> None:
        """A pass starts: no guest's console log grows past its cap."""
        for name in observed.vms:
            qemu.cap_console(self.files(name))

    def close(self) -> None:
        pass

    def _backing(self, vm: str, fmt: str) -> Path | None:
        """A qcow2 disk's seed, as its record names it, and only if it is a seed file of this state
        directory: the chain warmvm wrote, checked, never the one the disk's header may claim."""
        if fmt != "qcow2":
            return None
        record = read_disk_record(self.files(vm).disk_record)
        if record is None or record.format != "qcow2" or not record.seed:
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
        self._save(a.vm, VmRecord(a.network, str(a.ip), qemu.mac_for(a.vm), created))
        return {"ip": str(a.ip)}

    def _host_key(self, vm: str) -> None:
        """The VM's own SSH host key, made once at provisioning (the image holds none) and pinned in its
        known_hosts: made in the tmp area, the pin renamed into place last."""
        files = self.files(vm)
        if files.host_key.exists() and files.known_hosts.exists():
            if not files.host_key_dropbear.exists():  # VMs whose guests converted the key themselves
                atomic_write(files.host_key_dropbear, ssh.dropbear_key(files.host_key.read_text()), self.layout.tmp)
            return
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.layout.tmp) as tmp:
            made = Path(tmp) / "key"
            done = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", ssh.host_alias(vm),
                                   "-f", str(made)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  check=False)
            if done.returncode != 0:
                raise PermanentError(f"vm/{vm}: ssh-keygen failed: {done.stderr.strip()}")
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
        record = self._record(a.vm)
        files = self.files(a.vm)
        # a QEMU no pid file names can only exist if a start was ever recorded (the intent precedes the spawn)
        running = qemu.running_pid(files, record.pid) or (qemu.find_untracked(files) if record.started else None)
        if running is not None:  # spawned by a run killed before it could record it: tracked from now on
            self._save(a.vm, record.with_(pid=running))
            return {"pid": running, "adopted": True}
        accel = self._accel(a.accel)
        self._host_key(a.vm)  # VMs provisioned before host keys were their own get theirs now
        machine = Machine(a.vm, a.image.kernel, a.image.initrd, a.image.rootfs, files.disk, a.disk_format,
                          self._backing(a.vm, a.disk_format), a.tap, record.mac, a.address, str(a.gateway),
                          a.vcpus, a.memory, accel, files.host_key_dropbear, qemu.host_tsc_khz())
        # intent first: the record says a boot is starting before QEMU exists; QEMU's own pid file
        # then finds it, whenever this process dies
        starting = record.with_(pid=None, started=time.time(), accel=accel, ready=None, boots=record.boots + 1,
                                spec=a.spec, boot="cold", snapshot=None)
        details = {"accel": accel, "tap": a.tap, "restart": record.boots > 0 or None}
        cold_because = a.cold_because
        if a.snapshot is not None and a.snapshot.record.accel != accel:
            cold_because = f"snapshot {a.snapshot} was made for {a.snapshot.record.accel}"
        elif a.snapshot is not None:
            pid = self._spawn_restore(a, machine, starting)
            return details | {"pid": pid, "boot": "restore", "snapshot": str(a.snapshot)}
        self._save(a.vm, starting)
        pid = qemu.start(machine, files)
        self._save(a.vm, starting.with_(pid=pid))
        return details | {"pid": pid, "boot": "cold", "cold_because": cold_because}

    def _spawn_restore(self, a: VmStart, machine: Machine, starting: VmRecord) -> int:
        """QEMU in the snapshot's layout with the VM's own TAP, disk and identity, waiting for its
        state (loaded by the VM's await, so that VMs restored together load side by side)."""
        assert a.snapshot is not None
        files = self.files(a.vm)
        identity = qemu.Identity(a.vm, a.address, str(a.gateway), machine.mac, files.host_key_dropbear.read_bytes())
        atomic_write(files.identity, identity.entry(), self.layout.tmp)
        restoring = replace(machine, identity=files.identity, incoming=True, tsc_khz=a.snapshot.record.tsc_khz)
        starting = starting.with_(boot="restore", snapshot=a.snapshot.record.fingerprint)
        self._save(a.vm, starting)
        pid = qemu.start(restoring, files)
        self._save(a.vm, starting.with_(pid=pid))
        return pid

    def _load(self, vm: str, snapshot: Snapshot, record: VmRecord) -> Details:
        """The snapshot's state into the QEMU this process spawned for it, which then runs: how long
        QEMU took to listen and to load. The snapshot's digest is checked (once per version of the
        file and process) before QEMU reads a byte of it; one that does not match is deleted (made
        again). A failure kills QEMU and records it: the VM's next boot is cold."""
        files, pid = self.files(vm), record.pid
        assert pid is not None
        begun = time.monotonic()
        try:
            source = os.open(snapshot.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not self._intact(snapshot, source):
                    snapshot.path.unlink(missing_ok=True)
                    raise OSError(f"snapshot {snapshot} is corrupt (its digest does not match its record): deleted")
                with qemu.connect(files, pid, self.boot_timeout) as session:
                    listening = time.monotonic()
                    qemu.load_state(session, source, self.boot_timeout)
            finally:
                os.close(source)
        except OSError as e:
            qemu.kill_spawned(pid)
            current = read_record(files.record)
            if current is not None and current.started == record.started and current.pid == pid:
                # else a pass stopped or replaced it meanwhile (the daemon): not this load's to record
                self._save(vm, current.with_(pid=None, ready=None, restore_failed=snapshot.record.fingerprint))
            raise TemporaryError(f"vm/{vm}: restore failed, it boots cold: {e}", delay=0.0) from None
        finally:
            files.identity.unlink(missing_ok=True)  # read by QEMU at its start; its key and seed not kept
        loaded = time.monotonic()
        return {"restore_qmp_ms": round((listening - begun) * 1000, 1),
                "restore_load_ms": round((loaded - listening) * 1000, 1)}

    def _intact(self, snapshot: Snapshot, fd: int) -> bool:
        """Whether the open snapshot has its recorded digest: hashed once per version of the file
        and driver (VMs restored side by side wait for the one hash)."""
        st = os.fstat(fd)
        version = (str(snapshot.path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._hashing:
            if version not in self._verified:
                if sha256(fd) != snapshot.record.sha256:
                    return False
                self._verified.add(version)
        return True

    def vm_await(self, a: VmAwait) -> Details:
        record = self._record(a.vm)
        files = self.files(a.vm)
        loading: Details = {}
        if record.boot == "restore" and a.snapshot is not None and record.snapshot == a.snapshot.record.fingerprint \
                and record.pid is not None and not qemu.exited(record.pid):
            loading = self._load(a.vm, a.snapshot, record)  # spawned by this pass's start, waiting for its state
        elif record.boot == "restore" and not _restored(files):
            # the run that started it was killed before QEMU had its state: it would wait forever
            qemu.kill(files, record.pid)
            self._save(a.vm, record.with_(pid=None, ready=None))
            raise TemporaryError(f"vm/{a.vm}: its restore was cut short (QEMU never got its state): restored again",
                                 delay=0.0)
        started = record.started or time.time()
        deadline = time.monotonic() + max(0.0, started + self.boot_timeout - time.time())
        timeline = ssh.Timeline(files.console, started)
        ready = ssh.wait_ready(self.layout.ssh_key, str(a.ip), deadline, timeline,
                               lambda: qemu.running_pid(files, record.pid) is not None, self.pin(a.vm))
        current = read_record(files.record)
        if current is None or current.started != record.started:
            # in the daemon this wait runs beside the passes: the boot it waited for was stopped or
            # replaced meanwhile, and its record is no longer this wait's to write
            return {"superseded": True}
        if ready:
            now = time.time()
            first = current.create_to_ready_ms is None
            create_to_ready = (now - current.created) * 1000 if first else current.create_to_ready_ms
            self._save(a.vm, current.with_(ready=now, attempts=0, failure=None, create_to_ready_ms=create_to_ready))
            return {"boot_ms": round((now - started) * 1000, 1),
                    "create_to_ready_ms": round(create_to_ready, 1) if first and create_to_ready else None,
                    "timeline": timeline.done(), **loading}
        return self._failed_boot(a.vm, current, files)

    def _failed_boot(self, vm: str, record: VmRecord, files: VmFiles) -> Details:
        died = qemu.running_pid(files, record.pid) is None
        qemu.kill(files, record.pid)
        tail = qemu.console_tail(files, 1)
        if died:
            reason = f"QEMU exited: {qemu.failure_reason(files) or 'no message'}"
        else:
            reason = f"no SSH within {self.boot_timeout:g}s; " + (f"console: {tail}" if tail else "console is empty")
        attempts = record.attempts + 1
        restore_failed = record.snapshot if record.boot == "restore" else record.restore_failed
        self._save(vm, record.with_(pid=None, ready=None, attempts=attempts, failure=reason,
                                    restore_failed=restore_failed))
        if attempts >= BOOT_ATTEMPTS:
            raise PermanentError(f"boot failed {attempts} times, giving up: {reason}")
        raise TemporaryError(f"boot {attempts} of {BOOT_ATTEMPTS} failed: {reason}", delay=backoff(attempts, base=2.0))

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
            self._save(a.vm, VmRecord(a.network, str(a.ip), qemu.mac_for(a.vm), created))
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

    def _accel(self, wanted: str) -> str:
        return qemu.resolve_accel(wanted, self.layout, write=True)


def _restored(files: VmFiles) -> bool:
    """Whether a QEMU started to restore runs its guest, or is being given its state right now;
    False: it waits for a state no one sends (the run that started it was killed)."""
    try:
        with qemu.Qmp(files.qmp) as session:
            if session.run("query-status")["status"] == "running":
                return True
            return bool(session.run("query-migrate").get("status") == "active")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
