"""`warmvm get` views: desired + observed -> rows. Pure, so they are tested as data."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..base.model import VM, Desired
from ..base.units import human
from ..engine.plan import plan
from ..engine.state import Observed
from ..vms.plan import phase
from ..vms.state import VmRecord

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
                     "vms": sum(1 for t in observed.net.taps if t.mark.network == net.name and t.mark.vm),
                     "hostPorts": ",".join(map(str, net.host_ports)) or "-", "egress": str(net.egress)})
    return rows


def pool(desired: Desired, observed: Observed) -> list[Row]:
    masters = {b.index: b.name for b in observed.net.bridges.values()}
    return [{"tap": t.name, "network": t.mark.network, "holder": t.mark.vm or "(idle)",
             "bridge": masters.get(t.master or -1, "-"), "up": t.up}
            for t in sorted(observed.net.taps, key=lambda t: (t.mark.network, t.name))]


def vms(desired: Desired, observed: Observed) -> list[Row]:
    """A VM the planner refuses something (a disk that does not fit, no free address...) says why;
    one that waits on it is Pending."""
    taps = observed.net.vm_taps()
    refused = _refusals(desired, observed)
    rows = []
    for name in sorted(set(desired.vms) | set(taps) | set(observed.disks) | set(observed.vms)):
        vm = desired.vms.get(name)
        tap, disk, state = taps.get(name), observed.disks.get(name), observed.vms.get(name)
        record = state.record if state else None
        current, reason = phase(name, vm, observed)
        if name in refused:
            current, reason = "Pending" if current == "Provisioning" else current, refused[name]
        rows.append({"name": name, "phase": current, "ip": record.ip if record else "-",
                     "tap": tap.name if tap else "-", "accel": (record.accel or "-") if record else "-",
                     "boot": _boot(vm, record),
                     "image": vm.image if vm and vm.image else "-",
                     "disk": f"{human(disk.size)} {disk.taken}" if disk else "-",
                     "diskUsed": human(disk.allocated) if disk else "-",
                     "diskVirtual": human(disk.size) if disk else "-",
                     "restarts": max(0, record.boots - 1) if record else 0,
                     "exits": record.exits if record else 0,
                     "nextStart": _next_start(record, observed.now),
                     "createToReady": f"{record.create_to_ready_ms / 1000:.2f}s"
                     if record and record.create_to_ready_ms else "-",
                     "readiness": (record.readiness or "-") if record and state and state.ready else "-",
                     "reason": reason})
    return rows


def _next_start(record: VmRecord | None, now: float) -> str:
    """When a VM that waits out its back-off may start again ("-": it does not wait)."""
    if record is None or record.retry_at is None or record.retry_at <= now or record.pid is not None:
        return "-"
    return f"in {record.retry_at - now:.0f}s ({time.strftime('%H:%M:%S', time.localtime(record.retry_at))})"


def _refusals(desired: Desired, observed: Observed) -> dict[str, str]:
    """Each VM's problem in the plan a reconcile would make now."""
    out: dict[str, str] = {}
    for problem in plan(desired, observed).problems:
        ref, _, why = problem.partition(": ")
        if ref.startswith("vm/") and ref[3:] in desired.vms:
            out.setdefault(ref[3:], why)
    return out


def images(desired: Desired, observed: Observed) -> list[Row]:
    rows = []
    for name, state in sorted(observed.images.items()):
        image = desired.images.get(name)
        ready = state.ready()
        if image is not None and image.seed is None:
            seed = "none"
        elif state.inputs in state.failed:
            seed = f"failed: {state.failed[state.inputs]}"
        elif ready is None:
            seed = "missing"
        else:
            seed = "ready" if ready == state.inputs else "stale (in use until the new one is ready)"
        files = state.seeds.get(ready) if ready else None
        rows.append({"name": name, "default": bool(image and image.default), "spec": "present" if image else "gone",
                     "seed": seed, "seedSize": human(files.size) if files else "-",
                     "seedAge": age(observed.now - files.mtime) if files else "-",
                     "sizedSeeds": len(files.sized) if files else 0,
                     "snapshots": _snapshots(name, observed),
                     "vms": sum(1 for d in observed.disks.values() if d.image == name)})
    return rows


def _boot(vm: VM | None, record: VmRecord | None) -> str:
    """How its current boot began, and how its spec asks it to (when they differ: it fell back)."""
    did = record.boot if record and record.boot else "-"
    wants = vm.boot if vm else did
    return did if did in ("-", wants) else f"{did} (asks {wants})"


def _snapshots(image: str, observed: Observed) -> str:
    """Each shape VMs want restored, and how its snapshot is; then the snapshots no VM wants."""
    snapshots = observed.snapshots
    parts = []
    for (name, shape), fingerprint in sorted(snapshots.wanted.items()):
        if name != image:
            continue
        ready = snapshots.ready(name, shape)
        if ready is not None:
            state = f"ready {ready.record.size >> 20}Mi"
        elif fingerprint is not None and (name, fingerprint) in snapshots.failed:
            state = f"failed: {snapshots.failed[(name, fingerprint)]}"
        else:
            state = "not made yet (its VMs boot cold)"
        parts.append(f"{shape} {state}")
    wanted = set(snapshots.wanted.values())
    kept = [f for (name, fp), f in snapshots.on_disk.items() if name == image and fp not in wanted and f.snapshot]
    if kept:
        parts.append(f"{len(kept)} wanted by no VM (freed by the next reconcile)")
    return "; ".join(parts) or "-"


def age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span:.0f}{unit}"
    return f"{seconds:.0f}s"


def trash(desired: Desired, observed: Observed) -> list[Row]:
    """Removed VMs' disks kept for the retention time: a VM of that name that comes back gets its own."""
    retention = desired.policy.retain_removed
    return [{"vm": e.vm, "removed": f"{age(observed.now - e.removed_at)} ago",
             "expiresIn": age(max(0.0, e.removed_at + retention - observed.now)),
             "size": human(e.size), "ip": e.record.ip if e.record else "-",
             "image": e.disk.image if e.disk else "-", "path": str(e.path)}
            for e in sorted(observed.trash, key=lambda e: (e.vm, e.removed_at))]


VIEWS: dict[str, Callable[[Desired, Observed], list[Row]]] = {
    "networks": networks, "pool": pool, "vms": vms, "images": images, "trash": trash}


def table(rows: list[Row]) -> str:
    if not rows:
        return "(none)"
    headers = list(rows[0])
    cells = [[str(r.get(h, "")) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
