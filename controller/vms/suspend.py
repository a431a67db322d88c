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
        saved_on = qemu.inputs_of(qemu.argv_of(pid))
        self.save(a.vm, record := record.with_(suspending=True))
        begun = time.monotonic()
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.layout.tmp / f"{scratch_prefix('suspend')}{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with qemu.Qmp(files.qmp, self.timeout) as session:
                if session.run("query-status")["status"] == "postmigrate":
                    # a killed run saved it already; QEMU migrates a guest once: it runs a moment
                    # (a state it may have left goes first), and is saved afresh
                    record = self._run_on(a.vm, session, record)
                qemu.save_state(session, fd, self.timeout)
                os.fsync(fd)
                saved = time.monotonic()
                digest, size = sha256(fd), os.fstat(fd).st_size
                os.rename(tmp, files.saved_state)
                fsync_dir(files.directory)
                self.save(a.vm, record := record.with_(saved=digest, saved_at=time.time(), saved_on=saved_on,
                                                       pid=None, ready=None))
                try:
                    session.run("quit")
                except OSError:
                    pass  # a QEMU that quits may close its socket before it answers: _gone below says

        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        if not qemu.wait_gone(files, pid, QUIT_TIMEOUT):
            qemu.kill(files, pid)
        self.save(a.vm, record.with_(suspending=False))
        return {"size": size, "save_ms": round((saved - begun) * 1000, 1),
                "suspend_ms": round((time.monotonic() - begun) * 1000, 1)}

    def abort(self, a: VmContinue) -> Details:
        """A suspend a killed run began, which the spec no longer asks for: the guest runs on."""
        files, record = self._current(a.vm)
        with qemu.Qmp(files.qmp, self.timeout) as session:
            self._run_on(a.vm, session, record)
        return {}

    def _run_on(self, vm: str, session: qemu.Qmp, record: VmRecord) -> VmRecord:
        """The guest of `session` runs (on) from its memory: a saved state of it is removed first, so
        that it can never be resumed from once the guest has moved on."""
        files = self.layout.vm(vm)
        files.saved_state.unlink(missing_ok=True)
        fsync_dir(files.directory)
        self.save(vm, record := record.with_(saved=None, saved_at=None, saved_on=None, suspending=False))
        if session.run("query-status")["status"] != "running":
            session.run("cont")
        return record

    def spawn(self, a: VmStart, machine: Machine, starting: VmRecord) -> int:
        """QEMU with the machine the VM was suspended from (a VM restored from a snapshot runs in the
        snapshot's layout: `snapshot` in its record), waiting for its saved state (loaded by its await)."""
        files = self.layout.vm(a.vm)
        resuming = replace(machine, incoming=True) if starting.snapshot is None else self.snapshot_machine(a, machine)
        now_on = qemu.inputs_of(qemu.qemu_argv(resuming, files))
        if starting.saved_on is not None and starting.saved_on != now_on:
            self._refused(a.vm, starting, "it would resume on another machine or root file system than it was "
                                          "suspended on")
        starting = starting.with_(boot=BootMode.RESUME)
        self.save(a.vm, starting)
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
                    if qemu.running_pid(files, pid) is None or not _failed(session):
                        # stopped or killed under it (a pass, the operator): nothing is wrong with the
                        # state, which stays for the next resume
                        raise TemporaryError(f"vm/{vm}: its resume was cut short: {e}", delay=0.0) from None
                    self._refused(vm, record, f"QEMU refused its saved state: {e}")
                self._run_on(vm, session, record)
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
                self._run_on(vm, session, record)
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
            when = int(time.time())
            while files.refused_state(when).exists():
                when += 1
            os.rename(files.saved_state, files.refused_state(when))
            fsync_dir(files.directory)

    def _refused(self, vm: str, record: VmRecord, why: str) -> NoReturn:
        """Its state put aside for good, the VM to boot cold; the record written only if it is still
        this resume's (the daemon's passes may have stopped or replaced it meanwhile)."""
        if record.pid is not None:
            qemu.kill_spawned(record.pid)
        self.put_aside(vm)
        current = read_record(self.layout.vm(vm).record)
        if current is not None and current.started == record.started and current.pid == record.pid:
            self.save(vm, current.with_(pid=None, ready=None, saved=None, saved_at=None, saved_on=None,
                                        suspending=False, failure=f"{why}: put aside, it boots cold"))
        raise TemporaryError(f"vm/{vm}: resume failed, it boots cold: {why}", delay=0.0)

    def _current(self, vm: str) -> tuple[VmFiles, VmRecord]:
        files = self.layout.vm(vm)
        record = read_record(files.record)
        if record is None:
            raise TemporaryError(f"vm/{vm}: no record")
        return files, record


def _failed(session: qemu.Qmp) -> bool:
    """Whether QEMU itself says the incoming state failed (as against being cut short)."""
    try:
        return bool(session.run("query-migrate").get("status") == "failed")
    except (OSError, ValueError, KeyError, TypeError):
        return False
