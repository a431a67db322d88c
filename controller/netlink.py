"""The netlink driver: every change warmvm makes to network devices.

Observation lives in linkdump (fast, stdlib); this module mutates, through
pyroute2 (imported lazily: it costs 300 ms, which a no-op pass never pays)
and, for TAP creation, the tun ioctls directly, because pyroute2's tuntap add
omits IFF_TUN_EXCL and silently takes over an existing idle TAP.

A new TAP is marked, attached and brought up while our file descriptor still
holds it, and made persistent last: if we die before that, the kernel deletes
it with our descriptor, so no unmarked TAP of ours can ever be left behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import struct
from collections.abc import Sequence
from ipaddress import IPv4Interface
from typing import TYPE_CHECKING, Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt

from .errors import PermanentError, TemporaryError
from .linkdump import dump_links
from .ownership import Mark
from .pool import NameAllocator

if TYPE_CHECKING:
    from pyroute2 import IPRoute

TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
IFF_TAP, IFF_NO_PI, IFF_TUN_EXCL = 0x0002, 0x1000, 0x8000
NAME_ATTEMPTS = 64
GROUP_DELETE_MIN = 4  # below this, single deletes are as fast as tagging a group


class NameTaken(Exception):
    pass


class NetlinkDriver:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._ipr: IPRoute | None = None
        self.rng = rng or random.Random()
        self.allocators: dict[str, NameAllocator] = {}
        self.name_calls = 0  # TUNSETIFF attempts: the kernel calls spent on naming

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def observed_names(self, names: frozenset[str]) -> None:
        """Start a pass: allocators are rebuilt from this dump's names."""
        self.allocators = {}
        self._names = names

    def _allocator(self, prefix: str) -> NameAllocator:
        if prefix not in self.allocators:
            self.allocators[prefix] = NameAllocator(prefix, self._names, self.rng)
        return self.allocators[prefix]

    # --- bridges -------------------------------------------------------------

    def ensure_bridge(self, name: str, mark: Mark, gateway: IPv4Interface) -> None:
        index = _index(name)
        if index is None:
            self._call("create bridge", name, lambda: self.ipr.link("add", ifname=name, kind="bridge"))
            index = _index(name)
            assert index is not None
            # the kernel ignores IFLA_IFALIAS on creation; mark at once
            self._call("mark bridge", name, lambda: self.ipr.link("set", index=index, ifalias=str(mark)))
        self._call("bring up", name, lambda: self.ipr.link("set", index=index, state="up"))
        have = {f"{a.get('address')}/{a['prefixlen']}" for a in self.ipr.get_addr(index=index, family=socket.AF_INET)}
        if str(gateway) not in have:
            self._call("add address", name, lambda: self.ipr.addr(
                "add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen))

    def delete_bridge(self, name: str, mark: Mark) -> None:
        self.delete([name], mark)

    # --- TAPs ----------------------------------------------------------------

    def create_taps(self, prefix: str, count: int, mark: Mark, bridge: str) -> list[str]:
        master = self.bridge_index(bridge)
        return [self.create_tap(prefix, mark, master) for _ in range(count)]

    def create_tap(self, prefix: str, mark: Mark, master: int) -> str:
        allocator = self._allocator(prefix)

        @retry(retry=retry_if_exception_type(NameTaken), stop=stop_after_attempt(NAME_ATTEMPTS), reraise=True)
        def attempt() -> str:
            try:
                name = allocator.propose()
            except LookupError as e:
                raise PermanentError(str(e)) from None
            try:
                self._create_exclusive(name, mark, master)
            except NameTaken:
                allocator.taken(name)
                raise
            return name

        try:
            return attempt()
        except NameTaken:
            raise TemporaryError(f"no free {prefix}N name after {NAME_ATTEMPTS} attempts: "
                                 "other allocators keep taking them") from None

    def _create_exclusive(self, name: str, mark: Mark, master: int) -> None:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.name_calls += 1
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL))
            except OSError as e:
                if e.errno in (errno.EBUSY, errno.EINVAL, errno.EEXIST):
                    raise NameTaken(name) from None
                raise PermanentError(f"{name}: cannot create TAP: {e.strerror}") from None
            index = socket.if_nametoindex(name)
            self._call("attach", name, lambda: self.ipr.link("set", index=index, ifalias=str(mark),
                                                             master=master, state="up"))
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        finally:
            os.close(fd)

    def mark(self, name: str, expect: Mark, mark: Mark, bridge: str | None = None) -> None:
        """Re-mark one of our TAPs (claim or release), attaching it to `bridge` and up."""
        index = self._owned(name, expect)
        kwargs: dict[str, Any] = {"ifalias": str(mark), "state": "up"}
        if bridge:
            kwargs["master"] = self.bridge_index(bridge)
        self._call("mark", name, lambda: self.ipr.link("set", index=index, **kwargs))

    def delete(self, names: Sequence[str], mark: Mark) -> None:
        """Delete our devices carrying `mark`; many at once go by device group."""
        if len(names) < GROUP_DELETE_MIN:
            for name in names:
                index = self._owned(name, mark)
                self._call("delete", name, lambda: self.ipr.link("del", index=index))
            return
        self._delete_group(names, mark)

    def _delete_group(self, names: Sequence[str], mark: Mark) -> None:
        group = self.rng.randrange(1 << 20, 1 << 31)
        by_name = {link.name: link for link in dump_links()}
        for name in names:
            link = by_name.get(name)
            if link is None or link.alias != str(mark):
                raise PermanentError(f"{name}: not ours any more (mark {link.alias if link else 'gone'!r})")
            self._call("tag for deletion", name, lambda: self.ipr.link("set", index=link.index, group=group))
        members = {link.name for link in dump_links() if link.group == group}
        if members != set(names):
            raise PermanentError(f"device group {group} holds devices we did not tag: "
                                 f"{sorted(members - set(names))[:5]}; not deleting")
        self._call("delete group", str(group), lambda: self.ipr.link("del", index=0, group=group))

    # --- helpers -------------------------------------------------------------

    def _owned(self, name: str, mark: Mark) -> int:
        """Index of `name`, checked to still carry our mark right before we touch it."""
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            links = self.ipr.get_links(ifname=name)
        except NetlinkError:
            links = []
        if not links:
            raise TemporaryError(f"{name}: device is gone")
        alias = links[0].get("IFLA_IFALIAS")
        if alias != str(mark):
            raise PermanentError(f"{name}: carries mark {alias!r}, expected {str(mark)!r}; not touching it")
        return int(links[0]["index"])

    def bridge_index(self, bridge: str) -> int:
        index = _index(bridge)
        if index is None:
            raise TemporaryError(f"bridge {bridge} does not exist yet")
        return index

    def _call(self, what: str, name: str, fn: Any) -> Any:
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            return fn()
        except NetlinkError as e:
            message = f"{name}: {what}: {os.strerror(e.code) if e.code else e}"
            if e.code == errno.EXFULL:
                raise PermanentError(message + " (a bridge holds at most 1023 ports)") from None
            raise PermanentError(message) from None


def _index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None
