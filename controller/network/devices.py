"""Device work of the network driver: new TAPs under fresh names, and netlink's refusals in the
error vocabulary.

New TAPs: names from one dump's used set (names.py), each taken with an
exclusive create (tun.py: TUNSETIFF with IFF_TUN_EXCL, which the kernel
refuses for a name in use, never adopts), a taken name retried under another
(tenacity). A batch is marked, attached and brought up in one netlink write
while our descriptors still hold it, and persisted last: if we die before
that, the kernel deletes it with our descriptors, so no unmarked TAP of ours
is ever left behind.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Callable
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt

from ..adapters import tun
from ..adapters.netlink import rtnl
from ..adapters.netlink.messages import LinkChange
from ..base.errors import TemporaryError, os_error
from .marks import Mark
from .names import NameAllocator

NAME_ATTEMPTS = 64
BATCH = 128  # TAPs held open at once while a batch is configured


class _NameTaken(Exception):
    """Control flow of the allocation retry loop; never leaves this module."""


class TapMaker:
    """Creates TAPs of ours; one allocator per name prefix, rebuilt from each pass's observation."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.naming = threading.Lock()  # VMs are provisioned side by side: one allocator, one at a time
        self.allocators: dict[str, NameAllocator] = {}
        self.names: frozenset[str] = frozenset()  # every device name in the last observation
        self.name_calls = 0  # TUNSETIFF attempts: the kernel calls spent on naming

    def reset(self, names: frozenset[str]) -> None:
        self.allocators, self.names = {}, names

    def create(self, prefix: str, count: int, mark: Mark, master: int, isolated: bool | None = None) -> list[str]:
        names: list[str] = []
        with self.naming:
            while len(names) < count:
                names += self._create_batch(prefix, min(BATCH, count - len(names)), mark, master, isolated)
        return names

    def _allocator(self, prefix: str) -> NameAllocator:
        if prefix not in self.allocators:
            self.allocators[prefix] = NameAllocator(prefix, self.names, self.rng)
        return self.allocators[prefix]

    def _create_batch(self, prefix: str, count: int, mark: Mark, master: int,
                      isolated: bool | None = None) -> list[str]:
        """Opens `count` new TAPs, marks/attaches/ups them in one netlink write, then persists them."""
        held: list[tuple[str, int]] = []
        try:
            for _ in range(count):
                held.append(self._open_fresh(prefix))
            guard("attach new TAP", lambda: rtnl.set_links(
                [LinkChange(name, str(mark), master, up=True, isolated=isolated) for name, _ in held]))
            for _, fd in held:
                tun.persist(fd)
            return [name for name, _ in held]
        finally:
            for _, fd in held:
                os.close(fd)  # unpersisted TAPs vanish here

    def _open_fresh(self, prefix: str) -> tuple[str, int]:
        """A new TAP under a fresh name, held open (not yet persistent); retries taken names."""
        allocator = self._allocator(prefix)

        @retry(retry=retry_if_exception_type(_NameTaken), stop=stop_after_attempt(NAME_ATTEMPTS), reraise=True)
        def attempt() -> tuple[str, int]:
            name = allocator.propose()
            try:
                return name, self._open_exclusive(name)
            except _NameTaken:
                allocator.taken(name)
                raise

        try:
            return attempt()
        except _NameTaken:
            raise TemporaryError(f"no free {prefix}N name after {NAME_ATTEMPTS} attempts: "
                                 "other allocators keep taking them") from None

    def _open_exclusive(self, name: str) -> int:
        self.name_calls += 1
        try:
            return tun.open_exclusive(name)
        except OSError as e:
            if e.errno in (errno.EBUSY, errno.EINVAL, errno.EEXIST):
                raise _NameTaken(name) from None
            raise os_error(f"{name}: cannot create TAP", e) from None


def guard(what: str, fn: Callable[[], Any]) -> Any:
    """Runs a netlink change; the kernel's refusal, raw (OSError) or through pyroute2, becomes one line."""
    try:
        return fn()
    except OSError as e:  # rtnl's errors name the device in strerror
        code, reason = e.errno or 0, e.strerror or str(e)
    except _pyroute2_error() as e:  # evaluated only on failure: the raw path never imports pyroute2
        code = int(getattr(e, "code", 0) or 0)
        reason = os.strerror(code) if code else str(e)
    hint = " (a bridge holds at most 1023 ports)" if code == errno.EXFULL else ""
    raise os_error(what, OSError(code, f"{reason}{hint}"))


def _pyroute2_error() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError
    error: type[Exception] = NetlinkError
    return error
