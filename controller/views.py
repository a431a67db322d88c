"""`warmvm get` views: desired + observed -> rows. Pure, so they are tested as data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .model import Desired
from .observed import Observed

Row = dict[str, Any]


def networks(desired: Desired, observed: Observed) -> list[Row]:
    rows = []
    for net in sorted(desired.networks.values(), key=lambda n: n.name):
        bridge = observed.net.bridges.get(net.bridge)
        state = "missing" if bridge is None else ("foreign" if bridge.owner != net.name else
                                                  ("up" if bridge.up else "down"))
        rows.append({"name": net.name, "bridge": net.bridge, "bridgeState": state, "cidr": str(net.cidr),
                     "gateway": str(net.gateway), "idle": len(observed.net.idle_taps(net.name)),
                     "target": net.pool_size,
                     "vms": sum(1 for t in observed.net.taps if t.mark.network == net.name and t.mark.vm)})
    return rows


def pool(desired: Desired, observed: Observed) -> list[Row]:
    masters = {b.index: b.name for b in observed.net.bridges.values()}
    return [{"tap": t.name, "network": t.mark.network, "holder": t.mark.vm or "(idle)",
             "bridge": masters.get(t.master or -1, "-"), "up": t.up}
            for t in sorted(observed.net.taps, key=lambda t: (t.mark.network, t.name))]


def vms(desired: Desired, observed: Observed) -> list[Row]:
    taps = observed.net.vm_taps()
    names = sorted(set(desired.vms) | set(taps))
    rows = []
    for name in names:
        vm = desired.vms.get(name)
        tap = taps.get(name)
        rows.append({"name": name, "network": vm.network if vm else tap.mark.network if tap else "-",
                     "tap": tap.name if tap else "-", "spec": "present" if vm else "gone"})
    return rows


VIEWS: dict[str, Callable[[Desired, Observed], list[Row]]] = {"networks": networks, "pool": pool, "vms": vms}


def table(rows: list[Row]) -> str:
    if not rows:
        return "(none)"
    headers = list(rows[0])
    cells = [[str(r.get(h, "")) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
