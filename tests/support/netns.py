"""A private network namespace per test, and the QEMU processes a test started.

Tests never touch the host's own network: `private_netns` creates a namespace with a name unique to
this run, moves the calling thread into it (so netlink sockets, /dev/net/tun and child processes all
land there), and always moves back and deletes it, which removes every device made inside.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def private_netns() -> Iterator[str]:
    """Inside a new network namespace (its loopback up) for the duration; yields its name. Needs root."""
    name = f"wvt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        _setns(home)
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False)


def qemu_pids_under(directory: Path) -> list[int]:
    """QEMU processes whose command line points into `directory` (so: started by this test)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].startswith(b"qemu-system") and any(str(directory).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


def kill_qemu_under(directory: Path) -> None:
    """SIGKILL to every QEMU whose command line points into `directory`."""
    for pid in qemu_pids_under(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
