"""TAP devices through /dev/net/tun: the ioctls, called directly.

pyroute2's tuntap add omits IFF_TUN_EXCL and silently takes over an existing
idle TAP; here a name that exists is refused by the kernel (EBUSY), never
adopted. A TAP lives as long as a descriptor holds it, unless made
persistent: a TAP of ours is marked and attached while held, persisted last.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_TUN_EXCL = 0x0002, 0x1000, 0x4000, 0x8000


def _open(name: bytes, flags: int) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name, IFF_TAP | IFF_NO_PI | flags))
    except OSError:
        os.close(fd)
        raise
    return fd


def open_exclusive(name: str) -> int:
    """A new TAP named `name`, held by the returned descriptor; OSError (EBUSY, EEXIST or EINVAL)
    when the name is taken."""
    return _open(name.encode(), IFF_TUN_EXCL)


def persist(fd: int) -> None:
    """The TAP outlives its descriptor."""
    fcntl.ioctl(fd, TUNSETPERSIST, 1)


def transient_tap() -> int:
    """A new TAP that exists only as long as this descriptor (and QEMU's copy of it): the kernel names
    it (wvtpl0, wvtpl1, ...), so it is never one that exists already; it is attached to nothing and
    never up. A template's: its guest lets its NIC go before it is saved."""
    return _open(b"wvtpl%d", IFF_VNET_HDR)
