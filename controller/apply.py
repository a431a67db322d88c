"""Applying: each action kind handed to its driver.

The imperative shell around the pure planner. A handler does one action and
returns details for the lifecycle log; errors are TemporaryError or
PermanentError, which the runner turns into outcomes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .actions import (
    Action,
    BridgeDelete,
    BridgeEnsure,
    DiskClone,
    DiskDelete,
    DiskGrow,
    DiskScratch,
    IpAssign,
    PoolGrow,
    PoolShrink,
    SeedDelete,
    SeedGenerate,
    SeedSize,
    TapAttach,
    TapClaim,
    TapRelease,
    VmAwait,
    VmForget,
    VmStart,
    VmStop,
)
from .diskops import DiskOps
from .netlink import NetlinkDriver
from .observed import Observed
from .ownership import bridge_mark, pool_mark, vm_mark
from .vmops import VmOps


@dataclass
class Drivers:
    net: NetlinkDriver
    disks: DiskOps
    vms: VmOps

    def prepare(self, observed: Observed) -> None:
        """A pass starts: drivers that allocate from observed state rebuild from it."""
        self.net.observed_names(observed.net.names)

    def close(self) -> None:
        self.net.close()


Details = dict[str, Any]


def bridge_ensure(a: BridgeEnsure, d: Drivers) -> Details:
    d.net.ensure_bridge(a.bridge, bridge_mark(a.network), a.gateway)
    return {"bridge": a.bridge, "gateway": str(a.gateway)}


def bridge_delete(a: BridgeDelete, d: Drivers) -> Details:
    d.net.delete_bridge(a.bridge, bridge_mark(a.network))
    return {"bridge": a.bridge}


def pool_grow(a: PoolGrow, d: Drivers) -> Details:
    calls = d.net.name_calls
    names = d.net.create_taps(a.prefix, a.count, pool_mark(a.network), a.bridge)
    return {"count": len(names), "name_calls": d.net.name_calls - calls}


def pool_shrink(a: PoolShrink, d: Drivers) -> Details:
    d.net.delete(a.taps, pool_mark(a.network))
    return {"count": len(a.taps)}


def tap_attach(a: TapAttach, d: Drivers) -> Details:
    mark = vm_mark(a.network, a.vm) if a.vm else pool_mark(a.network)
    d.net.mark(a.tap, mark, mark, a.bridge)
    return {"tap": a.tap}


def tap_claim(a: TapClaim, d: Drivers) -> Details:
    mark = vm_mark(a.network, a.vm)
    if a.tap is not None:
        d.net.mark(a.tap, pool_mark(a.network), mark, a.bridge)
        d.net.claimed[a.vm] = a.tap
        return {"tap": a.tap, "from": "pool"}
    tap = d.net.create_tap(a.prefix, mark, a.bridge)
    d.net.claimed[a.vm] = tap
    return {"tap": tap, "from": "new"}


def tap_release(a: TapRelease, d: Drivers) -> Details:
    mark = vm_mark(a.network, a.vm)
    if a.keep:
        d.net.mark(a.tap, mark, pool_mark(a.network), a.bridge)
        return {"tap": a.tap, "to": "pool"}
    d.net.delete([a.tap], mark)
    return {"tap": a.tap, "to": "deleted"}


HANDLERS: dict[type[Action], Callable[[Any, Drivers], Details]] = {
    BridgeEnsure: bridge_ensure,
    BridgeDelete: bridge_delete,
    PoolGrow: pool_grow,
    PoolShrink: pool_shrink,
    TapAttach: tap_attach,
    TapClaim: tap_claim,
    TapRelease: tap_release,
    SeedGenerate: lambda a, d: d.disks.seed_generate(a),
    SeedSize: lambda a, d: d.disks.seed_size(a),
    SeedDelete: lambda a, d: d.disks.seed_delete(a),
    DiskClone: lambda a, d: d.disks.disk_clone(a),
    DiskScratch: lambda a, d: d.disks.disk_scratch(a),
    DiskGrow: lambda a, d: d.disks.disk_grow(a),
    DiskDelete: lambda a, d: d.disks.disk_delete(a),
    IpAssign: lambda a, d: d.vms.ip_assign(a),
    VmStart: lambda a, d: d.vms.vm_start(a),
    VmAwait: lambda a, d: d.vms.vm_await(a),
    VmStop: lambda a, d: d.vms.vm_stop(a),
    VmForget: lambda a, d: d.vms.vm_forget(a),
}


def apply_action(action: Action, drivers: Drivers) -> Details:
    return HANDLERS[type(action)](action, drivers)
