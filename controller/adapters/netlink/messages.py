"""rtnetlink messages, pure: the requests warmvm sends and the parsing of what the kernel answers.

Only the attributes warmvm keeps are decoded (name, alias, master, kind,
group, a bridge port's isolation flag, IPv4 addresses): the parsers walk the
attribute headers and slice nothing else. Tested on recorded kernel output.
No socket here (rtnl.py sends and receives).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

AF_UNSPEC, AF_INET = 0, 2


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # "tun", "bridge", ... (None for devices without link info, e.g. lo)
    alias: str | None
    master: int | None
    up: bool
    group: int
    isolated: bool = False  # a bridge port with IFLA_BRPORT_ISOLATED set


@dataclass(frozen=True)
class Address:
    index: int
    cidr: str  # "10.88.0.1/24"


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
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLMSG = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")
NLA = struct.Struct("=HH")
_IFADDR = struct.Struct("=BBBBI")
U32 = struct.Struct("=I")


class DumpInterrupted(Exception):
    """The device list changed during the dump; the caller dumps again."""


def dump_request(seq: int) -> bytes:
    body = IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0)
    attr = NLA.pack(8, IFLA_EXT_MASK) + U32.pack(RTEXT_FILTER_SKIP_STATS)
    total = NLMSG.size + len(body) + len(attr)
    return NLMSG.pack(total, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body + attr


def addr_dump_request(seq: int) -> bytes:
    body = _IFADDR.pack(AF_INET, 0, 0, 0, 0)
    total = NLMSG.size + len(body)
    return NLMSG.pack(total, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_link_events(data: bytes) -> Iterator[tuple[bool, Link]]:
    """The devices named by link event messages, each with whether it was deleted."""
    for mtype, _flags, payload in iter_messages(data):
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            yield mtype == RTM_DELLINK, parse_link(payload)


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
    body = IFINFO.pack(AF_UNSPEC, 0, 0, flags, IFF_UP if change.up is not None else 0)
    attrs = pack_attr(IFLA_IFNAME, change.name.encode() + b"\0")  # ifindex 0: the kernel finds it by name
    if change.alias is not None:
        attrs += pack_attr(IFLA_IFALIAS, change.alias.encode())
    if change.master is not None:
        attrs += pack_attr(IFLA_MASTER, U32.pack(change.master))
    if change.group is not None:
        attrs += pack_attr(IFLA_GROUP, U32.pack(change.group))
    return pack_request(RTM_SETLINK, seq, body + attrs)


def isolate_request(seq: int, name: str, isolated: bool) -> bytes:
    """IFLA_BRPORT_ISOLATED of a bridge port, by name: RTM_NEWLINK on an existing device with its
    slave data (RTM_SETLINK ignores it; AF_BRIDGE's setlink wants an index). The kernel applies it
    with the port's current master, so it must follow the request that attaches the port."""
    body = IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0)
    port = pack_attr(IFLA_BRPORT_ISOLATED, bytes([int(isolated)]))
    info = pack_attr(IFLA_INFO_SLAVE_DATA | NLA_F_NESTED, port)
    attrs = pack_attr(IFLA_IFNAME, name.encode() + b"\0") + pack_attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    return pack_request(RTM_NEWLINK, seq, body + attrs)


def dellink_request(seq: int, name: str | None = None, group: int | None = None) -> bytes:
    body = IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0)
    nla = pack_attr(IFLA_IFNAME, name.encode() + b"\0") if name else pack_attr(IFLA_GROUP, U32.pack(group or 0))
    return pack_request(RTM_DELLINK, seq, body + nla)


def getlink_request(seq: int, name: str) -> bytes:
    body = IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0)
    attrs = pack_attr(IFLA_IFNAME, name.encode() + b"\0") + pack_attr(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
    return NLMSG.pack(NLMSG.size + len(body) + len(attrs), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body + attrs


def pack_request(mtype: int, seq: int, payload: bytes) -> bytes:
    return NLMSG.pack(NLMSG.size + len(payload), mtype, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload


def iter_acks(data: bytes) -> Iterator[tuple[int, int]]:
    offset = 0
    while offset + NLMSG.size <= len(data):
        length, mtype, _flags, seq, _pid = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size:
            return
        if mtype == NLMSG_ERROR:
            yield seq, struct.unpack_from("=i", data, offset + NLMSG.size)[0]
        offset += (length + 3) & ~3


def pack_attr(atype: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return NLA.pack(length, atype) + value + b"\0" * ((4 - length % 4) % 4)


def iter_messages(data: bytes) -> Iterator[tuple[int, int, memoryview]]:
    view = memoryview(data)
    offset = 0
    while offset + NLMSG.size <= len(data):
        length, mtype, flags, _seq, _pid = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size:
            break
        yield mtype, flags, view[offset + NLMSG.size: offset + length]
        offset += (length + 3) & ~3


def parse_links(chunks: list[bytes], strict: bool = True) -> Iterator[Link]:
    """Links from raw RTM_NEWLINK dump messages; `strict`: refuse a dump the kernel flags as
    interrupted (it may miss or repeat devices)."""
    hint = [0]
    for data in chunks:
        for mtype, flags, payload in iter_messages(data):
            if strict and flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted()
            if mtype == RTM_NEWLINK:
                yield parse_link(payload, hint)


def parse_addresses(chunks: list[bytes]) -> Iterator[Address]:
    """IPv4 addresses from raw RTM_NEWADDR dump messages."""
    for data in chunks:
        for mtype, flags, payload in iter_messages(data):
            if flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted()
            if mtype != RTM_NEWADDR:
                continue
            family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(payload)
            for atype, value in _attrs(payload, _IFADDR.size):
                if family == AF_INET and atype == IFA_LOCAL:
                    yield Address(index, f"{IPv4Address(bytes(value))}/{prefixlen}")


def parse_link(payload: memoryview, hint: list[int] | None = None) -> Link:
    """One RTM_NEWLINK; `hint`: shared by the links of one dump (see _port_isolated)."""
    hint = hint if hint is not None else [0]
    _family, _type, index, flags, _change = IFINFO.unpack_from(payload)
    name = ""
    kind = alias = None
    master = None
    group = 0
    isolated = False
    unpack, end, offset = NLA.unpack_from, len(payload), IFINFO.size
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
                master = U32.unpack_from(value)[0] or None
            elif atype == IFLA_GROUP:
                group = U32.unpack_from(value)[0]
            else:
                for info, data in _attrs(value, 0):
                    if info == IFLA_INFO_KIND:
                        kind = _cstr(data)
                    elif info == IFLA_INFO_SLAVE_DATA:
                        isolated = _port_isolated(data, hint)
        offset += (length + 3) & ~3
    return Link(index, name, kind, alias, master, bool(flags & IFF_UP), group, isolated)


_ISOLATED_HEADER = NLA.pack(5, IFLA_BRPORT_ISOLATED)


def _port_isolated(data: memoryview, hint: list[int]) -> bool:
    """IFLA_BRPORT_ISOLATED in a bridge port's slave data (about 40 attributes): looked for first at
    `hint`, where the previous port of the dump had it (the kernel writes every attribute before it,
    fixed-size, for every port: a thousand ports cost 0.5 ms, not 4), else by walking the headers."""
    at = hint[0]
    if data[at: at + 4] == _ISOLATED_HEADER and at + 4 < len(data):
        return data[at + 4] != 0
    unpack, end, offset = NLA.unpack_from, len(data), 0
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
        length, atype = NLA.unpack_from(buf, offset)
        if length < 4:
            return
        yield atype & NLA_TYPE_MASK, buf[offset + 4: offset + length]
        offset += (length + 3) & ~3


def _cstr(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")
