"""Raw rtnetlink: the two hot paths, observing all devices and configuring many TAPs.

pyroute2's `get_links()` decodes every attribute of every device (about 0.5 ms
each: 470 ms for 1000 TAPs), importing pyroute2 costs 300 ms, and its sync
calls run an asyncio loop each (2.4 ms per set). So observation sends one dump
request on a plain netlink socket, asks the kernel to skip statistics, and
`parse_links` walks the attribute headers, decoding only name, alias, master,
kind, group and a bridge port's isolation flag (addresses are dumped the same
way); and per-device changes (set, isolate, delete, delete by group) go as a
batch of requests in one write whose acks are then read. The parsers are pure and tested on recorded kernel
output. Bridges and addresses go through pyroute2 (driver.py). Errors are
OSError, translated by the driver.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TypeVar

from .messages import (
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWLINK,
    Address,
    DumpInterrupted,
    Link,
    LinkChange,
    addr_dump_request,
    dellink_request,
    dump_request,
    getlink_request,
    isolate_request,
    iter_acks,
    iter_messages,
    parse_addresses,
    parse_link,
    parse_links,
    setlink_request,
)

NETLINK_ROUTE = 0
DUMP_ATTEMPTS = 30


T = TypeVar("T")


def dump_links() -> list[Link]:
    """All devices of the calling thread's network namespace; retries an interrupted dump."""
    return _retrying(lambda: list(parse_links(_dump_raw(dump_request))))


def dump_addresses() -> list[Address]:
    """All IPv4 addresses of the calling thread's network namespace."""
    return _retrying(lambda: list(parse_addresses(_dump_raw(addr_dump_request))))


def _retrying(dump: Callable[[], list[T]]) -> list[T]:
    """A dump the kernel flags as interrupted (the device list changed under it) is taken again,
    with a short backoff, so that another tool's burst of changes does not fail a pass."""
    for attempt in range(DUMP_ATTEMPTS):
        try:
            return dump()
        except DumpInterrupted:
            time.sleep(0.001 * attempt)
    raise OSError(errno.EAGAIN, f"netlink dump interrupted {DUMP_ATTEMPTS} times in a row by concurrent changes")


RTMGRP_LINK = 1


def link_events() -> socket.socket:
    """A socket that receives every RTM_NEWLINK/RTM_DELLINK of this network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((0, RTMGRP_LINK))
    return sock


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    return sock


def set_links(changes: list[LinkChange]) -> None:
    """Applies every change in one write, in order (a port's isolation right after its attach);
    raises OSError naming the first device that failed."""
    requests: list[bytes] = []
    names: list[str] = []
    for change in changes:
        if change != LinkChange(change.name, isolated=change.isolated):  # anything but isolation
            requests.append(setlink_request(len(requests) + 1, change))
            names.append(change.name)
        if change.isolated is not None:
            requests.append(isolate_request(len(requests) + 1, change.name, change.isolated))
            names.append(change.name)
    _transact(requests, names)


def delete_links(names: list[str]) -> None:
    _transact([dellink_request(i + 1, name=n) for i, n in enumerate(names)], names)


def delete_group(group: int) -> None:
    _transact([dellink_request(1, group=group)], [f"group {group}"])


def get_link(name: str) -> Link | None:
    """One device by name (one kernel request, whatever the device count)."""
    with _socket() as sock:
        sock.send(getlink_request(1, name))
        data = sock.recv(1 << 16)
    for mtype, _flags, payload in iter_messages(data):
        if mtype == RTM_NEWLINK:
            return parse_link(payload)
        if mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", payload)
            if code == -errno.ENODEV:
                return None
            raise OSError(-code, f"{name}: {os.strerror(-code)}")
    return None


def _transact(requests: list[bytes], names: list[str]) -> None:
    if not requests:
        return
    with _socket() as sock:
        sock.sendall(b"".join(requests))
        pending = set(range(1, len(requests) + 1))
        while pending:
            data = sock.recv(1 << 16)
            for seq, code in iter_acks(data):
                pending.discard(seq)
                if code:
                    raise OSError(-code, f"{names[seq - 1]}: {os.strerror(-code)}")


def _dump_raw(request: Callable[[int], bytes]) -> list[bytes]:
    chunks: list[bytes] = []
    with _socket() as sock:
        seq = os.getpid() & 0xFFFF
        sock.send(request(seq))
        while True:
            data = sock.recv(1 << 20)
            chunks.append(data)
            if _ends_dump(data):
                return chunks


def _ends_dump(data: bytes) -> bool:
    for mtype, _flags, _payload in iter_messages(data):
        if mtype == NLMSG_DONE:
            return True
        if mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", _payload)
            if code:
                raise OSError(-code, os.strerror(-code))
    return False
