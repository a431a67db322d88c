"""The network driver: every change warmvm makes to network devices, one handler per action.

Changes go through pyroute2 (imported lazily: it costs 300 ms, which a no-op
pass never pays), except on the TAP creation hot path: the tun ioctls are
called directly, because pyroute2's tuntap add omits IFF_TUN_EXCL and
silently takes over an existing idle TAP, and new TAPs are configured in
batches through rtnl.set_links.

A new TAP is marked, attached and brought up while our file descriptor still
holds it, and made persistent last: if we die before that, the kernel deletes
it with our descriptor, so no unmarked TAP of ours can ever be left behind.

Guest containment goes through nft (nft.py): our two tables, named by this
instance, replaced whole in one transaction; no other table is ever named.
Egress needs net.ipv4.ip_forward: turned on when a network asks for it, as
libvirt does for its NAT networks, and never turned off (other users of the
host may rely on it).
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Interface
from typing import TYPE_CHECKING

from ..adapters import nft, sysctl
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
    ForwardingEnable,
    PoolGrow,
    PoolShrink,
    TapAttach,
    TapClaim,
    TapRelease,
)
from .devices import TapMaker, guard
from .firewall import render, render_delete
from .marks import Mark, bridge_mac, bridge_mark, pool_mark, vm_mark
from .nfttable import table_name
from .state import NetworkView

if TYPE_CHECKING:
    from pyroute2 import IPRoute

GROUP_DELETE_MIN = 4  # below this, single deletes are as fast as tagging a group


class NetworkDriver:
    def __init__(self, instance: str, rng: random.Random | None = None) -> None:
        self.instance = instance  # carried in every mark this driver writes
        self._ipr: IPRoute | None = None
        self.rng = rng or random.Random()
        self.taps = TapMaker(self.rng)

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

    @property
    def name_calls(self) -> int:
        """TUNSETIFF attempts so far: the kernel calls spent on naming."""
        return self.taps.name_calls

    def prepare(self, observed: NetworkView) -> None:
        """Start a pass: the allocators are rebuilt from this observation's names."""
        self.taps.reset(observed.net.names)

    def handlers(self) -> Handlers:
        return {BridgeEnsure: self.bridge_ensure, BridgeDelete: self.bridge_delete, PoolGrow: self.pool_grow,
                PoolShrink: self.pool_shrink, TapAttach: self.tap_attach, TapClaim: self.tap_claim,
                TapRelease: self.tap_release, DeviceAdopt: self.device_adopt, FirewallSync: self.firewall_sync,
                FirewallDelete: self.firewall_delete, ForwardingEnable: self.forwarding_enable}

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
        guard("adopt", lambda: rtnl.set_links([LinkChange(a.device, alias=str(ours))]))
        return {"device": a.device, "mark": str(ours)}

    def firewall_sync(self, a: FirewallSync) -> Details:
        script = _render(lambda: render(self._our_table(a.table), a.rules, a.host))
        _os(f"{a.table}: replace", lambda: nft.apply(script))
        return {"guests": len(a.rules.guests), "drop": len(a.rules.drop), "bridges": len(a.host.bridges),
                "allowed": len(a.host.allowed), "egress": len(a.host.egress)}

    def forwarding_enable(self, a: ForwardingEnable) -> Details:
        _os(f"{a.setting}: set to 1", lambda: sysctl.write(a.setting, "1"))
        return {"networks": ",".join(a.networks)}

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

    # --- bridges -------------------------------------------------------------

    def ensure_bridge(self, name: str, mark: Mark, gateway: IPv4Interface) -> None:
        link = rtnl.get_link(name)
        if link is not None and link.alias != str(mark):
            raise PermanentError(f"{name}: exists and is not ours (mark {link.alias!r}); not touching it")
        index = link.index if link else None
        if index is None:
            guard(f"{name}: create bridge", lambda: self.ipr.link("add", ifname=name, kind="bridge",
                                                                  address=bridge_mac(self.instance, name)))
            index = _index(name)
            assert index is not None
            # the kernel ignores IFLA_IFALIAS on creation; mark at once
            guard(f"{name}: mark bridge", lambda: self.ipr.link("set", index=index, ifalias=str(mark)))
        guard(f"{name}: bring up", lambda: self.ipr.link("set", index=index, state="up"))
        addresses = guard(f"{name}: read addresses", lambda: self.ipr.get_addr(index=index, family=socket.AF_INET))
        have = {f"{a.get('address')}/{a['prefixlen']}" for a in addresses}
        if str(gateway) not in have:
            guard(f"{name}: add address", lambda: self.ipr.addr(
                "add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen))

    # --- TAPs ----------------------------------------------------------------

    def create_taps(self, prefix: str, count: int, mark: Mark, bridge: str, isolated: bool | None = None) -> list[str]:
        return self.taps.create(prefix, count, mark, self.bridge_index(bridge), isolated)

    def create_tap(self, prefix: str, mark: Mark, bridge: str, isolated: bool | None = None) -> str:
        return self.taps.create(prefix, 1, mark, self.bridge_index(bridge), isolated)[0]

    def mark(self, name: str, expect: Mark, mark: Mark, bridge: str | None = None,
             isolated: bool | None = None) -> None:
        """Re-mark one of our TAPs (claim or release), attaching it to `bridge` and up, its port
        isolated or not as `isolated` says (None: as it is)."""
        self._check_owned([name], expect)
        master = self.bridge_index(bridge) if bridge else None
        guard("mark", lambda: rtnl.set_links([LinkChange(name, str(mark), master, up=True, isolated=isolated)]))

    def delete(self, names: Sequence[str], mark: Mark) -> None:
        """Delete our devices carrying `mark`; many at once go by device group."""
        self._check_owned(names, mark)
        if len(names) < GROUP_DELETE_MIN:
            guard("delete", lambda: rtnl.delete_links(list(names)))
            return
        group = self.rng.randrange(1 << 20, 1 << 31)
        guard("tag for deletion", lambda: rtnl.set_links([LinkChange(n, group=group) for n in names]))
        members = {link.name for link in rtnl.dump_links() if link.group == group}
        if members != set(names):
            raise PermanentError(f"device group {group} holds devices we did not tag: "
                                 f"{sorted(members ^ set(names))[:5]}; not deleting")
        guard("delete group", lambda: rtnl.delete_group(group))

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


def _render(make: Callable[[], str]) -> str:
    try:
        return make()
    except ValueError as e:  # a name or identity nft text cannot hold: retrying cannot help
        raise PermanentError(str(e)) from None


def _os(what: str, fn: Callable[[], None]) -> None:
    """An OSError of nft or /proc/sys, as one line."""
    try:
        fn()
    except OSError as e:
        raise os_error(what, e) from None


def _index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None
