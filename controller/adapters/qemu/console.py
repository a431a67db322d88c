"""A VM's serial console: QEMU writes it into a FIFO, a drainer of its own (drain.py) keeps it in a
bounded log, and readers take its end or follow it.

The bound holds at all times, with a controller running or not, whatever the guest writes: the log
never passes CONSOLE_CAP (past it, its last CONSOLE_KEEP bytes stay). A QEMU started before consoles
went through a FIFO writes its log itself; `cap` cuts such a log when a pass starts, as before.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ...statedir.layout import VmFiles
from . import drain

CONSOLE_CAP = 4 << 20  # bytes of console log kept; a guest must not fill the state's file system
CONSOLE_KEEP = 1 << 20  # what is left of it once it passes the cap
FOLLOW_POLL = 0.2
CHUNK_READ = 1 << 16


def make(files: VmFiles) -> None:
    """A fresh log and the FIFOs QEMU's `-chardev pipe` opens (console.in is QEMU's input: nobody writes
    it): files of ours, a link planted there is removed, not followed."""
    files.console.unlink(missing_ok=True)
    os.close(os.open(files.console, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    for fifo in files.console_fifos:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)


def start_drainer(files: VmFiles, qemu_pid: int) -> None:
    """The drainer of this QEMU's console, detached (a session of its own: it outlives the controller,
    and ends with its QEMU). Its Popen is dropped: Python reaps it at a later spawn."""
    subprocess.Popen([sys.executable, "-I", "-S", drain.__file__, str(files.console_fifos[1]), str(files.console),
                      str(qemu_pid), str(CONSOLE_CAP), str(CONSOLE_KEEP)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def drained(files: VmFiles) -> bool:
    """Whether a drainer holds this console's log (its lock), or the console needs none (written by a
    QEMU of before the FIFOs, or not there at all)."""
    if not files.console_fifos[1].exists():
        return True
    try:
        fd = os.open(files.console, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


def keep_bounded(files: VmFiles, qemu_pid: int | None) -> None:
    """A pass starts: a running QEMU's console has its drainer (one that died is replaced), and a log
    a QEMU writes itself is cut."""
    if not files.console_fifos[1].exists():
        cap(files)
    elif qemu_pid is not None and not drained(files):
        start_drainer(files, qemu_pid)


def cap(files: VmFiles) -> bool:
    """Keeps a log that QEMU writes itself under CONSOLE_CAP: past it, only its last CONSOLE_KEEP bytes
    stay (QEMU appends, so it goes on at the new end). True if it was cut."""
    try:
        fd = os.open(files.console, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size <= CONSOLE_CAP:
            return False
        drain.cut(fd, size, CONSOLE_KEEP)
        return True
    finally:
        os.close(fd)


def end(files: VmFiles, size: int = 1 << 16) -> bytes:
    """The end of the console log, however large a guest made it."""
    try:
        with open(files.console, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read(size)
    except OSError:
        return b""


def tail(files: VmFiles, lines: int = 15) -> str:
    return "\n".join(end(files, 8192).decode(errors="replace").splitlines()[-lines:])


def follow(path: Path, keep_on: bool, sleep: Callable[[float], None] = time.sleep) -> Iterator[bytes]:
    """The log's content, then (`keep_on`) what is written to it, for as long as the caller reads: from
    the start again when it is cut (it shrinks) or made anew (another inode, when its VM restarts)."""
    f = open(path, "rb")  # noqa: SIM115 (reopened below)
    try:
        while True:
            chunk = f.read(CHUNK_READ)
            if chunk:
                yield chunk
                continue
            if not keep_on:
                return
            sleep(FOLLOW_POLL)
            now = _stat(path)
            if now is not None and (now.st_ino != os.fstat(f.fileno()).st_ino or now.st_size < f.tell()):
                f.close()
                f = open(path, "rb")  # noqa: SIM115
    finally:
        f.close()


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
