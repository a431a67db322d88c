"""The network driver: every change warmvm makes to network devices, one handler per action.

Changes go through pyroute2 (imported lazily: it costs 300 ms, which a no-op
pass never pays), except on the TAP creation hot path: the tun ioctls are
called directly, because pyroute2's tuntap add omits IFF_TUN_EXCL and
silently takes over an existing idle TAP, and new TAPs are configured in
batches through rtnl.set_links.

A new TAP is marked, attached and brought up while our file descriptor still
holds it, and made persistent last: if we die before that, the kernel deletes
it with our descriptor, so no unmarked TAP of ours can ever be left behind.

Guest containment goes through nft (nft.py): our one table, named by this
instance, replaced whole in one transaction; no other table is ever named.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
from collections.abc import Callable, Sequence
from ipaddress import IPv4Interface
from typing import TYPE_CHECKING, Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt

from ..adapters import nft, tun
from ..adapters.netlink import rtnl
from ..adapters.netlink.messages import LinkChange
from ..base.actions import Details, Handlers
from ..base.errors import PermanentError, TemporaryError, os_error
from .actions import (
    BridgeDelete,
    BridgeEnsure,
    DeviceAdopt,
    FirewallDelete,
    FirewallSync,
    PoolGrow,
    PoolShrink,
    TapAttach,
    TapClaim,
    TapRelease,
)
from .firewall import render, render_delete, table_name
from .marks import Mark, bridge_mark, pool_mark, vm_mark
from .names import NameAllocator
from .state import NetworkView

if TYPE_CHECKING:
    from pyroute2 import IPRoute

NAME_ATTEMPTS = 64
BATCH = 128  # TAPs held open at once while a batch is configured
GROUP_DELETE_MIN = 4  # below this, single deletes are as fast as tagging a group


class _NameTaken(Exception):
    """Control flow of the allocation retry loop; never leaves this module."""


class NetworkDriver:
    def __init__(self, instance: str, rng: random.Random | None = None) -> None:
        self.instance = instance  # carried in every mark this driver writes
        self.naming = threading.Lock()
        self._ipr: IPRoute | None = None
        self.rng = rng or random.Random()
        self.allocators: dict[str, NameAllocator] = {}
        self.name_calls = 0  # TUNSETIFF attempts: the kernel calls spent on naming
        self._names: frozenset[str] = frozenset()  # every device name in the last observation

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

    def prepare(self, observed: NetworkView) -> None:
        """Start a pass: allocators are rebuilt from this observation's names."""
        self.allocators = {}
        self._names = observed.net.names

    def handlers(self) -> Handlers:
        return {BridgeEnsure: self.bridge_ensure, BridgeDelete: self.bridge_delete, PoolGrow: self.pool_grow,
                PoolShrink: self.pool_shrink, TapAttach: self.tap_attach, TapClaim: self.tap_claim,
                TapRelease: self.tap_release, DeviceAdopt: self.device_adopt, FirewallSync: self.firewall_sync,
                FirewallDelete: self.firewall_delete}

    # --- actions ---------------------------------------------------------------

    def bridge_ensure(self, a: BridgeEnsure) -> Details:
        self.ensure_bridge(a.bridge, bridge_mark(self.instance, a.network), a.gateway)
        return {"bridge": a.bridge, "gateway": str(a.gateway)}

    def bridge_delete(self, a: BridgeDelete) -> Details:
        self.delete([a.bridge], bridge_mark(self.instance, a.network))
        return {"bridge": a.bridge}

    def pool_grow(self, a: PoolGrow) -> Details:
        calls = self.name_calls
        names = self.create_taps(a.prefix, a.count, pool_mark(self.instance, a.network), a.bridge, a.isolated)
        return {"count": len(names), "name_calls": self.name_calls - calls}

    def pool_shrink(self, a: PoolShrink) -> Details:
        self.delete(a.taps, pool_mark(self.instance, a.network))
        return {"count": len(a.taps)}

    def tap_attach(self, a: TapAttach) -> Details:
        mark = vm_mark(self.instance, a.network, a.vm) if a.vm else pool_mark(self.instance, a.network)
        self.mark(a.tap, mark, mark, a.bridge, a.isolated)
        return {"tap": a.tap, "isolated": a.isolated}

    def tap_claim(self, a: TapClaim) -> Details:
        mark = vm_mark(self.instance, a.network, a.vm)
        if a.tap is not None:
            self.mark(a.tap, pool_mark(self.instance, a.network), mark, a.bridge, a.isolated)
            return {"tap": a.tap, "from": "pool"}
        return {"tap": self.create_tap(a.prefix, mark, a.bridge, a.isolated), "from": "new"}

    def tap_release(self, a: TapRelease) -> Details:
        mark = vm_mark(self.instance, a.network, a.vm)
        if a.keep:
            self.mark(a.tap, mark, pool_mark(self.instance, a.network), a.bridge)
            return {"tap": a.tap, "to": "pool"}
        self.delete([a.tap], mark)
        return {"tap": a.tap, "to": "deleted"}

    def device_adopt(self, a: DeviceAdopt) -> Details:
        legacy, ours = (Mark(owner, a.role, a.network, a.vm) for owner in (None, self.instance))
        self._check_owned([a.device], legacy)
        _guard("adopt", lambda: rtnl.set_links([LinkChange(a.device, alias=str(ours))]))
        return {"device": a.device, "mark": str(ours)}

    def firewall_sync(self, a: FirewallSync) -> Details:
        script = _render(lambda: render(self._our_table(a.table), a.rules))
        _nft(f"{a.table}: replace", lambda: nft.apply(script))
        return {"guests": len(a.rules.guests), "drop": len(a.rules.drop)}

    def firewall_delete(self, a: FirewallDelete) -> Details:
        script = _render(lambda: render_delete(self._our_table(a.table)))
        try:
            nft.apply(script)
        except nft.NftError as e:
            if e.errno != errno.ENOENT:  # gone already: what we wanted
                raise os_error(f"{a.table}: delete", e) from None
        except OSError as e:
            raise os_error(f"{a.table}: delete", e) from None
        return {}

    def _our_table(self, table: str) -> str:
        """Never another table than this instance's own, whatever an action says."""
        if table != table_name(self.instance):
            raise PermanentError(f"{table}: not this instance's table ({table_name(self.instance)}); not touching it")
        return table

    def _allocator(self, prefix: str) -> NameAllocator:
        if prefix not in self.allocators:
            self.allocators[prefix] = NameAllocator(prefix, self._names, self.rng)
        return self.allocators[prefix]

    # --- bridges -------------------------------------------------------------

    def ensure_bridge(self, name: str, mark: Mark, gateway: IPv4Interface) -> None:
        link = rtnl.get_link(name)
        if link is not None and link.alias != str(mark):
            raise PermanentError(f"{name}: exists and is not ours (mark {link.alias!r}); not touching it")
        index = link.index if link else None
        if index is None:
            _guard(f"{name}: create bridge", lambda: self.ipr.link("add", ifname=name, kind="bridge"))
            index = _index(name)
            assert index is not None
            # the kernel ignores IFLA_IFALIAS on creation; mark at once
            _guard(f"{name}: mark bridge", lambda: self.ipr.link("set", index=index, ifalias=str(mark)))
        _guard(f"{name}: bring up", lambda: self.ipr.link("set", index=index, state="up"))
        addresses = _guard(f"{name}: read addresses", lambda: self.ipr.get_addr(index=index, family=socket.AF_INET))
        have = {f"{a.get('address')}/{a['prefixlen']}" for a in addresses}
        if str(gateway) not in have:
            _guard(f"{name}: add address", lambda: self.ipr.addr(
                "add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen))

    # --- TAPs ----------------------------------------------------------------

    def create_taps(self, prefix: str, count: int, mark: Mark, bridge: str, isolated: bool | None = None) -> list[str]:
        master = self.bridge_index(bridge)
        names: list[str] = []
        with self.naming:
            while len(names) < count:
                names += self._create_batch(prefix, min(BATCH, count - len(names)), mark, master, isolated)
        return names

    def create_tap(self, prefix: str, mark: Mark, bridge: str, isolated: bool | None = None) -> str:
        with self.naming:  # VMs are provisioned side by side: one allocator, one at a time
            return self._create_batch(prefix, 1, mark, self.bridge_index(bridge), isolated)[0]

    def _create_batch(self, prefix: str, count: int, mark: Mark, master: int,
                      isolated: bool | None = None) -> list[str]:
        """Opens `count` new TAPs, marks/attaches/ups them in one netlink write, then persists them."""
        held: list[tuple[str, int]] = []
        try:
            for _ in range(count):
                held.append(self._open_fresh(prefix))
            _guard("attach new TAP", lambda: rtnl.set_links(
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

    def mark(self, name: str, expect: Mark, mark: Mark, bridge: str | None = None,
             isolated: bool | None = None) -> None:
        """Re-mark one of our TAPs (claim or release), attaching it to `bridge` and up, its port
        isolated or not as `isolated` says (None: as it is)."""
        self._check_owned([name], expect)
        master = self.bridge_index(bridge) if bridge else None
        _guard("mark", lambda: rtnl.set_links([LinkChange(name, str(mark), master, up=True, isolated=isolated)]))

    def delete(self, names: Sequence[str], mark: Mark) -> None:
        """Delete our devices carrying `mark`; many at once go by device group."""
        self._check_owned(names, mark)
        if len(names) < GROUP_DELETE_MIN:
            _guard("delete", lambda: rtnl.delete_links(list(names)))
            return
        group = self.rng.randrange(1 << 20, 1 << 31)
        _guard("tag for deletion", lambda: rtnl.set_links([LinkChange(n, group=group) for n in names]))
        members = {link.name for link in rtnl.dump_links() if link.group == group}
        if members != set(names):
            raise PermanentError(f"device group {group} holds devices we did not tag: "
                                 f"{sorted(members ^ set(names))[:5]}; not deleting")
        _guard("delete group", lambda: rtnl.delete_group(group))

    def _check_owned(self, names: Sequence[str], mark: Mark) -> None:
        """Right before we touch them: each device still exists and still carries our mark."""
        links = {n: rtnl.get_link(n) for n in names} if len(names) < GROUP_DELETE_MIN else \
            {link.name: link for link in rtnl.dump_links()}
        for name in names:
            link = links.get(name)
            if link is None:
                raise TemporaryError(f"{name}: device is gone")
            if link.alias != str(mark):
                raise PermanentError(f"{name}: carries mark {link.alias!r}, expected {str(mark)!r}; not touching it")

    def bridge_index(self, bridge: str) -> int:
        index = _index(bridge)
        if index is None:
            raise TemporaryError(f"bridge {bridge} does not exist yet")
        return index


def _guard(what: str, fn: Callable[[], Any]) -> Any:
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


def _render(make: Callable[[], str]) -> str:
    try:
        return make()
    except ValueError as e:  # a name or identity nft text cannot hold: retrying cannot help
        raise PermanentError(str(e)) from None


def _nft(what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except OSError as e:
        raise os_error(what, e) from None


def _pyroute2_error() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError
    error: type[Exception] = NetlinkError
    return error


def _index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None
