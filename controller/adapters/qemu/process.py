"""QEMU processes: started detached (with their console's drainer), recognised, stopped, killed.

QEMU is spawned in a session of its own with its output in the VM's
directory, and outlives the controller. Start returns as soon as QEMU is
exec'd: its own initialisation is part of the guest's boot, and a QEMU that
fails is seen by the readiness wait, with qemu.log's last line as the
reason. A pid alone is no proof (pids are reused), so a process is ours only
if its command line carries this VM's own pid-file path. Stopping asks the
guest over QMP (system_powerdown), then kills after a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

from ...base.errors import PermanentError
from ...statedir.layout import VmFiles
from . import console
from .machine import Machine, qemu_argv
from .qmp import Qmp, qmp


def start(m: Machine, files: VmFiles) -> int:
    """Spawns QEMU detached (own session, output to qemu.log) and returns its pid at once. A TAP
    given as a descriptor is QEMU's fd 3."""
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in (files.pidfile, files.qmp, files.ctl):
        stale.unlink(missing_ok=True)
    files.log.unlink(missing_ok=True)  # a fresh file of ours: a link planted there is removed, not followed
    os.close(os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    console.make(files)
    argv = qemu_argv(m, files)
    binary = shutil.which(argv[0])
    if binary is None:
        raise PermanentError(f"{argv[0]} is not installed (make setup installs it)")
    if not m.uid:
        raise PermanentError(f"{m.name}: no uid of its own to run QEMU as: it would run as root")
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, str(files.log), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW, 0o600),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    if isinstance(m.tap, int):
        actions.append((os.POSIX_SPAWN_DUP2, m.tap, 3))
        argv = qemu_argv(replace(m, tap=3), files)
    old = os.umask(0o077)  # the QMP socket and logs: owner only
    try:
        pid = os.posix_spawn(binary, argv, os.environ, setsid=True, file_actions=actions)
    finally:
        os.umask(old)
    try:
        console.start_drainer(files, pid)
    except OSError:
        pass  # the guest's console waits in its pipe; the next pass starts a drainer (console.keep_bounded)
    return pid


def running_pid(files: VmFiles, hint: int | None = None) -> int | None:
    """The pid of this VM's QEMU if one is alive: found through the pid file QEMU itself writes (so
    that a QEMU whose spawn was never recorded is found too), else the recorded `hint`. A pid alone is
    no proof (pids are reused): the process must be a QEMU whose own -pidfile argument is this very
    file, however either path is spelt."""
    for pid in (_pid_in(files.pidfile), hint):
        if pid is not None and _is_ours(pid, files.pidfile):
            return pid
    return None


def argv_of(pid: int) -> list[str]:
    """A process's command line (OSError: it is gone)."""
    return [os.fsdecode(a) for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]


def find_untracked(files: VmFiles) -> int | None:
    """A QEMU of this VM that no pid file names (its pid file removed): a scan of every process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_ours(int(entry.name), files.pidfile):
            return int(entry.name)
    return None


def _pid_in(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _is_ours(pid: int, pidfile: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, IndexError):
        return False
    if state == "Z":
        exited(pid)  # a QEMU this process spawned that died is its zombie until reaped
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system") or b"-pidfile" not in argv[:-1]:
        return False
    named = os.fsdecode(argv[argv.index(b"-pidfile") + 1])
    return os.path.realpath(os.path.join(cwd, named)) == os.path.realpath(pidfile)


def failure_reason(files: VmFiles) -> str:
    """Why QEMU exited: the last line it printed."""
    try:
        lines = [line for line in files.log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def stop(files: VmFiles, pid: int | None, timeout: float) -> str:
    """Stops the VM: ACPI power-down over QMP, SIGKILL after `timeout`. Returns how it ended."""
    pid = running_pid(files, pid)
    if pid is None:
        return "not running"
    how = "powerdown"
    try:
        qmp(files.qmp, "system_powerdown")
    except OSError:
        how = "killed"
    if not wait_gone(files, pid, timeout if how == "powerdown" else 0):
        how = "killed"
        kill(files, pid)
    for gone in (files.pidfile, files.qmp, files.ctl):
        gone.unlink(missing_ok=True)
    return how


def kill(files: VmFiles, pid: int | None) -> None:
    """SIGKILL to this VM's QEMU (its pid file's, else `pid`, if either is one), and waits for it to go."""
    found = running_pid(files, pid)
    if found is not None:
        os.kill(found, signal.SIGKILL)
        wait_gone(files, found, 5.0)


def wait_gone(files: VmFiles, pid: int | None, timeout: float) -> bool:
    """Whether this VM's QEMU is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while running_pid(files, pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def exited(pid: int) -> bool:
    """Whether a QEMU this process spawned has exited (it is reaped then); True as well for a pid
    that is no child of this process. Right after the spawn its command line may not be QEMU's
    yet, so `running_pid` cannot tell."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def kill_spawned(pid: int) -> None:
    """Kills a QEMU this process spawned and has not reaped (until it is reaped, its pid cannot be
    another process's), and reaps it. Right after the spawn, its command line may still be ours."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # reaped already
    if done == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def connect(files: VmFiles, pid: int, timeout: float) -> Qmp:
    """A session with a QEMU this process just spawned, once its QMP socket listens (QEMU dying
    first: OSError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Qmp(files.qmp, timeout)
        except OSError:
            if exited(pid) or time.monotonic() > deadline:
                raise OSError(f"QEMU exited: {failure_reason(files) or 'no message'}") from None
            time.sleep(0.005)
