"""Suspend and resume: the half of the VM driver that saves a running guest's whole state to the
VM's own file, and gives it back to a new QEMU.

Suspend: the record says a suspend began (the guest may be paused from here on), QMP `stop` and a
migration into a file of the tmp area, fsync'd, hashed and renamed to `suspend.state`; the record
names its digest; QEMU quits; the record says the suspend is over. Whenever the run is killed, the
next pass finds either a QEMU still there (it suspends again, or, if the spec no longer asks for it,
the guest runs on and a saved state is removed first) or a complete state its record vouches for.

Resume: QEMU starts with the VM's own machine and `-incoming defer`; its await checks the state's
digest, loads it with the guest paused, removes the file (a guest that ran on may never be given an
older memory again: a state file exists only while no QEMU runs from it), and only then lets it
run. A state that fails its digest, or that QEMU refuses, is put aside (`suspend.state.refused-T`,
trashed with the VM) and the VM boots cold from its disk, which is as the suspend left it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from ..adapters import guest, qemu
from ..adapters.qemu import Machine
from ..base.actions import Details
from ..base.errors import TemporaryError
from ..base.kinds import BootMode
from ..statedir.layout import Layout, VmFiles
from ..statedir.store import fsync_dir, scratch_prefix, sha256
from .actions import VmContinue, VmStart, VmSuspend
from .observe import read_record
from .state import VmRecord

QUIT_TIMEOUT = 10.0
ROOM_LEFT = 256 << 20  # free space a suspend leaves the state's file system, beyond the guest's memory
CLOCK_TIMEOUT = 5.0
EXEC_LATENCY = 0.01  # from the host's clock read to the guest's date(1) setting it, over the channel


class Suspender:
    def __init__(self, layout: Layout, timeout: float, save: Callable[[str, VmRecord], None],
                 snapshot_machine: Callable[[VmStart, Machine], Machine]) -> None:
        self.layout = layout
        self.timeout = timeout
        self.save = save  # the VM driver's durable record write
        self.snapshot_machine = snapshot_machine  # the restorer's: a VM restored from a snapshot runs in its layout

    def suspend(self, a: VmSuspend) -> Details:
        files, record = self._current(a.vm)
        pid = qemu.running_pid(files, record.pid)
        if pid is None:
            raise TemporaryError(f"vm/{a.vm}: its QEMU is not running", delay=0.0)
        room = _free(self.layout.root)
        if room < a.memory + ROOM_LEFT:  # checked before the guest is paused: it runs on, and says why
            raise TemporaryError(f"vm/{a.vm}: no room for its saved state ({room >> 20} MiB free, its memory "
                                 f"{a.memory >> 20} MiB + {ROOM_LEFT >> 20} MiB to spare)")
        self.save(a.vm, record := record.with_(suspending=True))
        begun = time.monotonic()
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.layout.tmp / f"{scratch_prefix('suspend')}{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with qemu.Qmp(files.qmp, self.timeout) as session:
                if session.run("query-status")["status"] == "postmigrate":
                    # a killed run saved it already, to a file no one can vouch for; QEMU migrates a
                    # guest once: it runs a moment, and is saved afresh
                    session.run("cont")
                qemu.save_state(session, fd, self.timeout)
                os.fsync(fd)
                saved = time.monotonic()
                digest, size = sha256(fd), os.fstat(fd).st_size
                os.rename(tmp, files.saved_state)
                fsync_dir(files.directory)
                self.save(a.vm, record := record.with_(saved=digest, saved_at=time.time(), pid=None, ready=None))
                try:
                    session.run("quit")
                except OSError:
                    pass  # a QEMU that quits may close its socket before it answers: _gone below says

        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        if not _gone(files, pid):
            qemu.kill(files, pid)
        self.save(a.vm, record.with_(suspending=False))
        return {"size": size, "save_ms": round((saved - begun) * 1000, 1),
                "suspend_ms": round((time.monotonic() - begun) * 1000, 1)}

    def resume_on(self, a: VmContinue) -> Details:
        """A guest a killed run paused for a suspend no longer asked for: a state it saved is removed
        first (the guest runs on from here), then it runs."""
        files, record = self._current(a.vm)
        files.saved_state.unlink(missing_ok=True)
        fsync_dir(files.directory)
        with qemu.Qmp(files.qmp, self.timeout) as session:
            if session.run("query-status")["status"] != "running":
                session.run("cont")
        self.save(a.vm, record.with_(suspending=False, saved=None, saved_at=None))
        return {}

    def spawn(self, a: VmStart, machine: Machine, starting: VmRecord) -> int:
        """QEMU with the machine the VM was suspended from (a VM restored from a snapshot runs in the
        snapshot's layout: `snapshot` in its record), waiting for its saved state (loaded by its await)."""
        starting = starting.with_(boot=BootMode.RESUME)
        self.save(a.vm, starting)
        files = self.layout.vm(a.vm)
        resuming = replace(machine, incoming=True) if starting.snapshot is None else self.snapshot_machine(a, machine)
        pid = qemu.start(resuming, files)
        self.save(a.vm, starting.with_(pid=pid))
        return pid

    @staticmethod
    def waiting(record: VmRecord, resume: bool | None) -> bool:
        """Whether this VM's QEMU was spawned by this process to resume, and waits for its state."""
        return (bool(resume) and record.boot == BootMode.RESUME and record.pid is not None
                and not qemu.exited(record.pid))

    def load(self, vm: str, record: VmRecord) -> Details:
        """The saved state into the QEMU spawned for it; the file removed before the guest runs. A
        state that fails its digest or that QEMU refuses is put aside, and the VM boots cold."""
        files, pid = self.layout.vm(vm), record.pid
        assert pid is not None
        begun = time.monotonic()
        try:
            source = os.open(files.saved_state, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            self._refused(vm, record, f"its saved state cannot be opened: {e.strerror}")
        try:
            if sha256(source) != record.saved:
                self._refused(vm, record, "its saved state does not match its digest")
            with qemu.connect(files, pid, self.timeout) as session:
                try:
                    qemu.load_state(session, source, self.timeout, run=False)
                except OSError as e:
                    self._refused(vm, record, f"QEMU refused its saved state: {e}")
                files.saved_state.unlink()
                fsync_dir(files.directory)
                self.save(vm, record.with_(saved=None, saved_at=None, suspending=False))
                session.run("cont")
        finally:
            os.close(source)
            files.identity.unlink(missing_ok=True)  # a snapshot layout's, read by QEMU at its start
        away = time.time() - record.saved_at if record.saved_at else None
        return {"resume_ms": round((time.monotonic() - begun) * 1000, 1),
                "suspended_s": round(away, 1) if away is not None else None}

    def run_loaded(self, vm: str, record: VmRecord) -> bool:
        """A resume a killed run cut short after QEMU had its whole state: the file goes (if it is
        still there), then the guest runs. False: QEMU does not hold a whole state."""
        files = self.layout.vm(vm)
        try:
            with qemu.Qmp(files.qmp, self.timeout) as session:
                if session.run("query-status")["status"] == "running":
                    return True
                if session.run("query-migrate").get("status") != "completed":
                    return False
                files.saved_state.unlink(missing_ok=True)
                fsync_dir(files.directory)
                self.save(vm, record.with_(saved=None, saved_at=None, suspending=False))
                session.run("cont")
                return True
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def set_clock(self, vm: str) -> float | None:
        """A resumed guest's wall clock, behind by the time it was suspended, set to the host's (to the
        second: busybox date) over its channel; how far behind it was. None: no agent answered (an
        image without it), and the clock is left as it is."""
        files = self.layout.vm(vm)
        deadline = time.monotonic() + CLOCK_TIMEOUT
        said = bytearray()
        try:
            with guest.open_session(files.ctl, deadline) as channel:
                guest.run(channel, ["date", "-u", "+%s"], deadline, lambda stream, data: said.extend(data))
                behind = time.time() - int(said.decode().strip())
                guest.run(channel, ["date", "-u", "-s", f"@{round(time.time() + EXEC_LATENCY)}"], deadline,
                          lambda stream, data: None)
        except (guest.ChannelError, OSError, ValueError):
            return None
        return round(behind, 1)

    def put_aside(self, vm: str) -> None:
        """A saved state that must not be resumed (its VM boots cold): kept for its operator."""
        files = self.layout.vm(vm)
        if files.saved_state.exists():
            os.rename(files.saved_state, files.refused_state(int(time.time())))
            fsync_dir(files.directory)

    def _refused(self, vm: str, record: VmRecord, why: str) -> NoReturn:
        if record.pid is not None:
            qemu.kill_spawned(record.pid)
        self.put_aside(vm)
        self.save(vm, record.with_(pid=None, ready=None, saved=None, saved_at=None, suspending=False,
                                   failure=f"{why}: put aside, it boots cold"))
        raise TemporaryError(f"vm/{vm}: resume failed, it boots cold: {why}", delay=0.0)

    def _current(self, vm: str) -> tuple[VmFiles, VmRecord]:
        files = self.layout.vm(vm)
        record = read_record(files.record)
        if record is None:
            raise TemporaryError(f"vm/{vm}: no record")
        return files, record


def _free(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _gone(files: VmFiles, pid: int) -> bool:
    deadline = time.monotonic() + QUIT_TIMEOUT
    while qemu.running_pid(files, pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
