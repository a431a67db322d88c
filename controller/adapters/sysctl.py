"""Kernel settings under /proc/sys, read and written as files.

A `net.*` setting belongs to the network namespace of the thread that opens
it, so these run in the caller's namespace, like the netlink and nft calls.
Failures are OSError.
"""

from __future__ import annotations

from pathlib import Path

IP_FORWARD = "net.ipv4.ip_forward"
ROOT = Path("/proc/sys")


def _path(name: str) -> Path:
    return ROOT / name.replace(".", "/")


def read(name: str) -> str:
    return _path(name).read_text().strip()


def write(name: str, value: str) -> None:
    with open(_path(name), "w") as f:
        f.write(value)
