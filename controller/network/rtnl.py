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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TypeVar

from .state import Address, Link

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 17, 18, 19, 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_DUMP_INTR = 0x10
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_GROUP, IFLA_EXT_MASK = 3, 10, 18, 20, 27, 29
IFLA_INFO_KIND, IFLA_INFO_SLAVE_DATA = 1, 5
IFLA_BRPORT_ISOLATED = 33
NLA_F_NESTED = 0x8000
IFA_LOCAL = 2
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP = 0x1
DUMP_ATTEMPTS = 30
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")
_IFADDR = struct.Struct("=BBBBI")
_U32 = struct.Struct("=I")
T = TypeVar("T")


class DumpInterrupted(Exception):
    """The device list changed during the dump; the caller dumps again."""


def dump_request(seq: int) -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    attr = _NLA.pack(8, IFLA_EXT_MASK) + _U32.pack(RTEXT_FILTER_SKIP_STATS)
    total = _NLMSG.size + len(body) + len(attr)
    return _NLMSG.pack(total, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body + attr


def addr_dump_request(seq: int) -> bytes:
    body = _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)
    total = _NLMSG.size + len(body)
    return _NLMSG.pack(total, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


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


def parse_link_events(data: bytes) -> Iterator[tuple[bool, Link]]:
    """The devices named by link event messages, each with whether it was deleted."""
    for mtype, _flags, payload in _messages(data):
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            yield mtype == RTM_DELLINK, _parse_link(payload)


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    return sock


@dataclass(frozen=True)
class LinkChange:
    """Changes to one device, found by name; None leaves a field as it is."""

    name: str
    alias: str | None = None
    master: int | None = None
    group: int | None = None
    up: bool | None = None
    isolated: bool | None = None  # bridge port isolation, set once attached (a second request)


def setlink_request(seq: int, change: LinkChange) -> bytes:
    flags = IFF_UP if change.up else 0
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, flags, IFF_UP if change.up is not None else 0)
    attrs = _attr(IFLA_IFNAME, change.name.encode() + b"\0")  # ifindex 0: the kernel finds it by name
    if change.alias is not None:
        attrs += _attr(IFLA_IFALIAS, change.alias.encode())
    if change.master is not None:
        attrs += _attr(IFLA_MASTER, _U32.pack(change.master))
    if change.group is not None:
        attrs += _attr(IFLA_GROUP, _U32.pack(change.group))
    return _request(RTM_SETLINK, seq, body + attrs)


def isolate_request(seq: int, name: str, isolated: bool) -> bytes:
    """IFLA_BRPORT_ISOLATED of a bridge port, by name: RTM_NEWLINK on an existing device with its
    slave data (RTM_SETLINK ignores it; AF_BRIDGE's setlink wants an index). The kernel applies it
    with the port's current master, so it must follow the request that attaches the port."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    port = _attr(IFLA_BRPORT_ISOLATED, bytes([int(isolated)]))
    info = _attr(IFLA_INFO_SLAVE_DATA | NLA_F_NESTED, port)
    attrs = _attr(IFLA_IFNAME, name.encode() + b"\0") + _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    return _request(RTM_NEWLINK, seq, body + attrs)


def dellink_request(seq: int, name: str | None = None, group: int | None = None) -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    attr = _attr(IFLA_IFNAME, name.encode() + b"\0") if name else _attr(IFLA_GROUP, _U32.pack(group or 0))
    return _request(RTM_DELLINK, seq, body + attr)


def getlink_request(seq: int, name: str) -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    attrs = _attr(IFLA_IFNAME, name.encode() + b"\0") + _attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
    return _NLMSG.pack(_NLMSG.size + len(body) + len(attrs), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body + attrs


def _request(mtype: int, seq: int, payload: bytes) -> bytes:
    return _NLMSG.pack(_NLMSG.size + len(payload), mtype, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload


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
    for mtype, _flags, payload in _messages(data):
        if mtype == RTM_NEWLINK:
            return _parse_link(payload)
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
            for seq, code in _acks(data):
                pending.discard(seq)
                if code:
                    raise OSError(-code, f"{names[seq - 1]}: {os.strerror(-code)}")


def _acks(data: bytes) -> Iterator[tuple[int, int]]:
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            return
        if mtype == NLMSG_ERROR:
            yield seq, struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
        offset += (length + 3) & ~3


def _attr(atype: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return _NLA.pack(length, atype) + value + b"\0" * ((4 - length % 4) % 4)


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
    for mtype, _flags, _payload in _messages(data):
        if mtype == NLMSG_DONE:
            return True
        if mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", _payload)
            if code:
                raise OSError(-code, os.strerror(-code))
    return False


def _messages(data: bytes) -> Iterator[tuple[int, int, memoryview]]:
    view = memoryview(data)
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, mtype, flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        yield mtype, flags, view[offset + _NLMSG.size: offset + length]
        offset += (length + 3) & ~3


def parse_links(chunks: list[bytes], strict: bool = True) -> Iterator[Link]:
    """Links from raw RTM_NEWLINK dump messages; `strict`: refuse a dump the kernel flags as
    interrupted (it may miss or repeat devices)."""
    hint = [0]
    for data in chunks:
        for mtype, flags, payload in _messages(data):
            if strict and flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted()
            if mtype == RTM_NEWLINK:
                yield _parse_link(payload, hint)


def parse_addresses(chunks: list[bytes]) -> Iterator[Address]:
    """IPv4 addresses from raw RTM_NEWADDR dump messages."""
    for data in chunks:
        for mtype, flags, payload in _messages(data):
            if flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted()
            if mtype != RTM_NEWADDR:
                continue
            family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(payload)
            for atype, value in _attrs(payload, _IFADDR.size):
                if family == socket.AF_INET and atype == IFA_LOCAL:
                    yield Address(index, f"{IPv4Address(bytes(value))}/{prefixlen}")


def _parse_link(payload: memoryview, hint: list[int] | None = None) -> Link:
    """One RTM_NEWLINK; `hint`: shared by the links of one dump (see _port_isolated)."""
    hint = hint if hint is not None else [0]
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    name = ""
    kind = alias = None
    master = None
    group = 0
    isolated = False
    unpack, end, offset = _NLA.unpack_from, len(payload), _IFINFO.size
    # hot loop (a thousand devices, ~40 attributes each): slice only what we keep
    while offset + 4 <= end:
        length, atype = unpack(payload, offset)
        if length < 4:
            break
        atype &= NLA_TYPE_MASK
        if atype in _WANTED:
            value = payload[offset + 4: offset + length]
            if atype == IFLA_IFNAME:
                name = _cstr(value)
            elif atype == IFLA_IFALIAS:
                alias = _cstr(value) or None
            elif atype == IFLA_MASTER:
                master = _U32.unpack_from(value)[0] or None
            elif atype == IFLA_GROUP:
                group = _U32.unpack_from(value)[0]
            else:
                for info, data in _attrs(value, 0):
                    if info == IFLA_INFO_KIND:
                        kind = _cstr(data)
                    elif info == IFLA_INFO_SLAVE_DATA:
                        isolated = _port_isolated(data, hint)
        offset += (length + 3) & ~3
    return Link(index, name, kind, alias, master, bool(flags & IFF_UP), group, isolated)


_ISOLATED_HEADER = _NLA.pack(5, IFLA_BRPORT_ISOLATED)


def _port_isolated(data: memoryview, hint: list[int]) -> bool:
    """IFLA_BRPORT_ISOLATED in a bridge port's slave data (about 40 attributes): looked for first at
    `hint`, where the previous port of the dump had it (the kernel writes every attribute before it,
    fixed-size, for every port: a thousand ports cost 0.5 ms, not 4), else by walking the headers."""
    at = hint[0]
    if data[at: at + 4] == _ISOLATED_HEADER and at + 4 < len(data):
        return data[at + 4] != 0
    unpack, end, offset = _NLA.unpack_from, len(data), 0
    while offset + 4 <= end:
        length, atype = unpack(data, offset)
        if length < 4:
            break
        if atype & NLA_TYPE_MASK == IFLA_BRPORT_ISOLATED:
            hint[0] = offset
            return length > 4 and data[offset + 4] != 0
        offset += (length + 3) & ~3
    return False


_WANTED = frozenset((IFLA_IFNAME, IFLA_IFALIAS, IFLA_MASTER, IFLA_GROUP, IFLA_LINKINFO))


def _attrs(buf: memoryview, offset: int) -> Iterator[tuple[int, memoryview]]:
    end = len(buf)
    while offset + 4 <= end:
        length, atype = _NLA.unpack_from(buf, offset)
        if length < 4:
            return
        yield atype & NLA_TYPE_MASK, buf[offset + 4: offset + length]
        offset += (length + 3) & ~3


def _cstr(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")
