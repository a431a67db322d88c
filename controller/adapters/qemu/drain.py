"""The console drainer: one small process per QEMU that moves its serial console from a FIFO into a
bounded log. Run as a script (`python -I -S drain.py FIFO LOG PID CAP KEEP`), it imports nothing of
warmvm, so it starts in a few ms and lives beside its QEMU whether a controller runs or not.

QEMU writes the console into FIFO.out (a `-chardev pipe`), which it holds open for reading and
writing itself: a write never fails for want of a reader, and a drainer that dies can be replaced
while QEMU runs (at most the pipe's 64 KiB wait in it meanwhile; then the guest's UART waits). The
log never passes CAP bytes: a write that would pass it leaves only the last KEEP bytes, after a line
that says where it was cut. One drainer per log (an exclusive flock on it: a second one exits at
once, and the lock tells the controller that one runs). It ends when its QEMU does (a pidfd).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import sys

CHUNK = 1 << 16


def cut(fd: int, size: int, keep: int, more: bytes = b"") -> int:
    """The log at `fd` (`size` bytes) plus `more`, cut to its last `keep` bytes after a line that says
    so; returns the new size. In place (same inode), so a follower sees it shrink."""
    total = size + len(more)
    tail = more[-keep:]
    if len(tail) < keep and size:
        start = max(0, size - (keep - len(tail)))
        tail = os.pread(fd, size - start, start) + tail
    data = b"[warmvm: console log cut at %d bytes]\n" % total + tail
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return len(data)


def pump(src: int, out: int, size: int, cap: int, keep: int) -> tuple[int, bool]:
    """Everything the FIFO holds now into the log; (new size, whether the writer is gone)."""
    while True:
        try:
            chunk = os.read(src, CHUNK)
        except BlockingIOError:
            return size, False
        if not chunk:
            return size, True
        if size + len(chunk) > cap:
            size = cut(out, size, keep, chunk)
        else:
            os.pwrite(out, chunk, size)
            size += len(chunk)


def drain(fifo: str, log: str, pid: int, cap: int, keep: int) -> int:
    out = os.open(log, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return 0  # another drainer has this log
        raise
    src = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    size = os.lseek(out, 0, os.SEEK_END)
    poller = select.poll()
    poller.register(src, select.POLLIN)
    try:
        qemu = os.pidfd_open(pid)
    except ProcessLookupError:
        qemu = -1
    if qemu < 0:
        pump(src, out, size, cap, keep)
        return 0
    poller.register(qemu, select.POLLIN)
    while True:
        events = dict(poller.poll())
        size, gone = pump(src, out, size, cap, keep)
        if gone or qemu in events:  # QEMU closed the pipe, or exited: what it wrote is in the log now
            return 0


if __name__ == "__main__":
    fifo_path, log_path, qemu_pid, cap_bytes, keep_bytes = sys.argv[1:6]
    sys.exit(drain(fifo_path, log_path, int(qemu_pid), int(cap_bytes), int(keep_bytes)))
