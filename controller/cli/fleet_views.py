"""`warmvm fleet get` views: the fleet as read from the store -> rows. Pure."""

from __future__ import annotations

from typing import Any

from ..fleet.state import Fleet, Need
from .views import age

Row = dict[str, Any]


def vms(fleet: Fleet, now: float) -> list[Row]:
    """Per VM its host, phase (as its host reports it), IP, boot mode and age; Pending with why."""
    rows = []
    for name in sorted({n for k, n in fleet.specs if k == "VM"} | set(fleet.placements)):
        placed = fleet.placements.get(name)
        host = placed.value.host if placed else None
        status = fleet.statuses.get((host, name)) if host else None
        if placed is None:
            pending = fleet.pending.get(name)
            phase, reason = "Pending", pending.value if pending else "not placed yet"
        elif host not in fleet.alive:
            phase, reason = "HostLost", f"host {host} has no live agent"
        elif status is None:
            phase, reason = "Placed", f"host {host} has not reported it yet"
        else:
            phase, reason = status.phase, status.reason
        since = status.created if status and status.created else placed.value.placed if placed else None
        rows.append({"name": name, "host": host or "-", "phase": phase, "ip": status.ip if status and status.ip
                     else "-", "boot": status.boot if status and status.boot else "-",
                     "age": age(now - since) if since else "-", "reason": reason})
    return rows


def hosts(fleet: Fleet, now: float) -> list[Row]:
    """Per host whether it is alive, its labels, capacity and what is allocated."""
    rows = []
    for name in sorted(set(fleet.hosts) | set(fleet.alive) | set(fleet.allocs)):
        info, alloc = fleet.hosts.get(name), fleet.allocs.get(name)
        allocated = alloc.value.need if alloc else Need(vcpus=0, memory=0)
        state = "Ready" if name in fleet.alive else "Lost"
        if name in fleet.cordoned:
            state += ",Cordoned"
        rows.append({"name": name, "state": state,
                     "labels": ",".join(f"{k}={v}" for k, v in sorted(info.labels.items())) if info else "-",
                     "capacity": f"{info.vcpus} vCPUs, {info.memory >> 20}Mi" if info else "-",
                     "allocated": f"{allocated.vcpus} vCPUs, {allocated.memory >> 20}Mi",
                     "vms": alloc.value.vms if alloc else 0, "reach": info.reach if info else "-"})
    return rows
