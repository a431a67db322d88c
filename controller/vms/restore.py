"""Restoring a VM from its image's boot snapshot: the half of the VM driver that spawns QEMU in the
snapshot's layout and gives it the saved state.

The start only spawns QEMU (waiting for its state); the VM's await loads the
state, so that VMs restored together load side by side. The snapshot's
digest is checked (once per version of the file and driver) before QEMU
reads a byte of it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from ..adapters import qemu
from ..adapters.qemu import Machine
from ..base.actions import Details
from ..base.errors import TemporaryError
from ..base.kinds import BootMode
from ..snapshots.state import Snapshot
from ..statedir.layout import Layout, VmFiles
from ..statedir.store import atomic_write, sha256
from .actions import VmStart
from .observe import read_record
from .state import VmRecord


class Restorer:
    def __init__(self, layout: Layout, boot_timeout: float, save: Callable[[str, VmRecord], None]) -> None:
        self.layout = layout
        self.boot_timeout = boot_timeout
        self.save = save  # the VM driver's durable record write
        # snapshot files whose digest this process checked: (path, inode, size, mtime, ctime)
        self._verified: set[tuple[str, int, int, int, int]] = set()
        self._hashing = threading.Lock()

    def spawn(self, a: VmStart, machine: Machine, starting: VmRecord) -> int:
        """QEMU in the snapshot's layout with the VM's own TAP, disk and identity, waiting for its
        state (loaded by the VM's await, so that VMs restored together load side by side)."""
        assert a.snapshot is not None
        files = self.layout.vm(a.vm)
        restoring = self.snapshot_machine(a, machine)
        starting = starting.with_(boot=BootMode.RESTORE, snapshot=a.snapshot.record.fingerprint)
        self.save(a.vm, starting)
        pid = qemu.start(restoring, files)
        self.save(a.vm, starting.with_(pid=pid))
        return pid

    def snapshot_machine(self, a: VmStart, machine: Machine) -> Machine:
        """`machine` in the snapshot's layout, waiting for a state: the VM's identity made anew."""
        files = self.layout.vm(a.vm)
        identity = qemu.Identity(a.vm, a.address, str(a.gateway), machine.mac, files.host_key_dropbear.read_bytes())
        atomic_write(files.identity, identity.entry(), self.layout.tmp)
        return qemu.snapshot_layout(machine, identity=files.identity, tsc_khz=a.tsc_khz, incoming=True)

    @staticmethod
    def waiting(record: VmRecord, snapshot: Snapshot | None) -> bool:
        """Whether this VM's QEMU was spawned by this process to be restored from `snapshot`, and
        waits for its state."""
        return (record.boot == BootMode.RESTORE and snapshot is not None
                and record.snapshot == snapshot.record.fingerprint
                and record.pid is not None and not qemu.exited(record.pid))

    def load(self, vm: str, snapshot: Snapshot, record: VmRecord) -> Details:
        """The snapshot's state into the QEMU this process spawned for it, which then runs: how long
        QEMU took to listen and to load. The snapshot's digest is checked (once per version of the
        file and process) before QEMU reads a byte of it; one that does not match is deleted (made
        again). A failure kills QEMU and records it: the VM's next boot is cold."""
        files, pid = self.layout.vm(vm), record.pid
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
                self.save(vm, current.with_(pid=None, ready=None, restore_failed=snapshot.record.fingerprint))
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


def restored(files: VmFiles) -> bool:
    """Whether a QEMU started to restore runs its guest, or is being given its state right now;
    False: it waits for a state no one sends (the run that started it was killed)."""
    try:
        with qemu.Qmp(files.qmp) as session:
            if session.run("query-status")["status"] == "running":
                return True
            return bool(session.run("query-migrate").get("status") == "active")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
