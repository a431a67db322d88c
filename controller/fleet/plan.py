"""Fleet planning: where a VM goes, and what each host's share of the fleet is. Pure.

A VM is placed on a live host (its agent holds its lease), not cordoned, whose labels match the
VM's hostSelector, where the VM's network and image apply (their hostSelectors) and whose free
capacity (capacity less the sum of its placements) holds the VM's vCPUs and memory; of those, the
one with the most free memory, so that VMs spread. The driver turns the choice into one
transaction that compares the host's allocation and presence as read here: a racing placer makes
it fail, never doubles a VM or overfills a host. A host's share is every network and image that
applies to it and every VM placed on it, with the resources its placement reserved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from ..base.model import VM
from ..vms.plan import phase
from ..vms.state import VmsView
from .state import Alloc, Fleet, Need, Placement, SpecObject, Versioned, VmStatus


@dataclass(frozen=True)
class Choice:
    vm: str
    host: str
    need: Need


def matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def usable(fleet: Fleet) -> list[str]:
    """Hosts that may take new VMs: alive, described, not cordoned."""
    return sorted(h for h in fleet.hosts if h in fleet.alive and h not in fleet.cordoned)


def lost_marks(fleet: Fleet) -> tuple[list[str], list[str]]:
    """Hosts seen without their presence that have no lost mark yet, and marks of hosts back."""
    return (sorted(h for h in fleet.hosts if h not in fleet.alive and h not in fleet.lost),
            sorted(h for h in fleet.lost if h in fleet.alive))


def to_recreate(fleet: Fleet, now: float) -> tuple[list[SpecObject], float | None]:
    """`recreate` VMs whose host has been lost for their lostAfter (each is placed anew, elsewhere), and
    when the next one's lostAfter is up (None: no other VM waits for it)."""
    due: list[SpecObject] = []
    later: list[float] = []
    for name, placed in sorted(fleet.placements.items()):
        spec, mark = fleet.specs.get(("VM", name)), fleet.lost.get(placed.value.host)
        if spec is None or not spec.recreate or mark is None:
            continue
        at = mark.value + spec.lost_after
        if at <= now:
            due.append(spec)
        else:
            later.append(at)
    return due, min(later, default=None)


def free(fleet: Fleet, host: str) -> Need:
    alloc = fleet.allocs.get(host)
    return fleet.hosts[host].capacity - (alloc.value.need if alloc else Need(vcpus=0, memory=0))


def unplaced(fleet: Fleet) -> list[SpecObject]:
    return [s for name, s in sorted(fleet.of_kind("VM").items()) if name not in fleet.placements]


@dataclass
class Room:
    """A usable host as placement sees it: what applies there, and what is free."""

    name: str
    labels: dict[str, str]
    networks: frozenset[str]
    images: frozenset[str]
    default_image: bool
    free: Need


def rooms(fleet: Fleet) -> list[Room]:
    networks, images = fleet.of_kind("Network"), fleet.of_kind("Image")
    out = []
    for host in usable(fleet):
        labels = fleet.hosts[host].labels
        here = {n: s for n, s in images.items() if matches(s.selector, labels)}
        out.append(Room(host, labels, frozenset(n for n, s in networks.items() if matches(s.selector, labels)),
                        frozenset(here), any(s.default for s in here.values()), free(fleet, host)))
    return out


def place(fleet: Fleet, vm: SpecObject) -> Choice | str:
    """The host `vm` goes to, or why it goes nowhere (its Pending reason)."""
    return _choose(rooms(fleet), vm)


def place_all(fleet: Fleet, vms: list[SpecObject]) -> tuple[dict[str, list[Choice]], dict[str, str]]:
    """Where each of `vms` goes, in order, each placement counted against its host's room before the
    next is chosen: the choices by host, and why the others go nowhere."""
    batches: dict[str, list[Choice]] = {}
    nowhere: dict[str, str] = {}
    hosts = rooms(fleet)
    for vm in vms:
        choice = _choose(hosts, vm)
        if isinstance(choice, str):
            nowhere[vm.name] = choice
            continue
        batches.setdefault(choice.host, []).append(choice)
        room = next(r for r in hosts if r.name == choice.host)
        room.free = room.free - choice.need
    return batches, nowhere


def _choose(hosts: list[Room], vm: SpecObject) -> Choice | str:
    assert vm.need is not None
    why: list[str] = []
    fitting: list[tuple[int, int, str]] = []
    for room in hosts:
        refusal = _refusal(vm, room)
        if refusal is None and not vm.need.fits(room.free):
            refusal = f"{room.free} free"
        if refusal is not None:
            why.append(f"{room.name}: {refusal}")
            continue
        fitting.append((-room.free.memory, -room.free.vcpus, room.name))
    if not fitting:
        return f"fits no host: needs {vm.need} ({'; '.join(why) if why else 'no live host'})"
    return Choice(vm.name, min(fitting)[2], vm.need)


def with_placed(fleet: Fleet, choices: list[Choice], revision: int) -> Fleet:
    """The fleet once `choices` are placed (all on one host), written at `revision`."""
    allocs, placements = dict(fleet.allocs), dict(fleet.placements)
    for choice in choices:
        seen = allocs.get(choice.host)
        allocs[choice.host] = Versioned((seen.value if seen else Alloc()).plus(choice.need), revision)
        placements[choice.vm] = Versioned(placement_of(choice, 0.0), revision)
    return replace(fleet, allocs=allocs, placements=placements)


def placement_of(choice: Choice, when: float, epoch: int = 1) -> Placement:
    return Placement(host=choice.host, epoch=epoch, vcpus=choice.need.vcpus, memory=choice.need.memory, placed=when)


def _refusal(vm: SpecObject, room: Room) -> str | None:
    if not matches(vm.selector, room.labels):
        return f"labels do not match {vm.selector}"
    if vm.network is not None and vm.network not in room.networks:
        return f"network {vm.network!r} does not apply here"
    if vm.network is None and len(room.networks) != 1:
        return f"{len(room.networks)} networks apply here and the VM names none"
    if vm.image is not None and vm.image not in room.images:
        return f"image {vm.image!r} does not apply here"
    if vm.image is None and room.images and not room.default_image:
        return "no default image applies here and the VM names none"
    return None


def share(fleet: Fleet, host: str, labels: dict[str, str], fenced: bool = False) -> dict[str, str]:
    """The spec files of `host`'s share: file name -> its document (JSON, which is YAML). `fenced`: the
    host could not renew its presence for longer than its TTL, so its `recreate` VMs may be placed
    anew elsewhere: they do not run here meanwhile (its `wait` VMs do)."""
    files: dict[str, str] = {}
    for (kind, name), spec in sorted(fleet.specs.items()):
        if kind == "VM":
            placed = fleet.placements.get(name)
            if placed is None or placed.value.host != host:
                continue
            document = _reserved(spec.document, placed.value.need, fenced and spec.recreate)
        elif matches(spec.selector, labels):
            document = spec.document
        else:
            continue
        files[f"{kind.lower()}-{name}.yaml"] = json.dumps(document, indent=1, sort_keys=True) + "\n"
    return files


def _reserved(document: dict[str, object], need: Need, stopped: bool = False) -> dict[str, object]:
    """A VM's document with what its placement reserved: a spec that grew after it was placed runs
    as it was reserved (a VM is never moved or overcommitted by a spec update)."""
    spec = dict(document.get("spec") or {})  # type: ignore[call-overload]
    spec["vcpus"], spec["memory"] = need.vcpus, f"{need.memory >> 10}Ki"
    if stopped:
        spec["running"] = False
    return {**document, "spec": spec}


def status_of(name: str, vm: VM | None, observed: VmsView, epoch: int) -> VmStatus:
    """A VM's status as its host reports it: its phase and why, its address, how it booted."""
    current, reason = phase(name, vm, observed)
    state = observed.vms.get(name)
    record = state.record if state else None
    return VmStatus(phase=current, reason=reason, ip=record.ip if record else None,
                    boot=str(record.boot) if record and record.boot else None,
                    created=record.created if record else None, epoch=epoch)


ACTIVE = ("Running", "Booting")  # a VM with its QEMU up


def audit(fleet: Fleet) -> list[str]:
    """The fleet's invariants, each broken one named: every VM assigned at most once and running
    only where it is assigned (as each live host reports), every host's allocation the sum of its
    placements and within its capacity, no placement of a VM that has no spec."""
    found = []
    for host, alloc in sorted(fleet.allocs.items()):
        mine = [p.value for p in fleet.placements.values() if p.value.host == host]
        total = Alloc(vcpus=sum(p.vcpus for p in mine), memory=sum(p.memory for p in mine), vms=len(mine))
        if alloc.value != total:
            found.append(f"host/{host}: allocation {alloc.value.need} ({alloc.value.vms} VMs) is not the sum of "
                         f"its placements {total.need} ({total.vms} VMs)")
        info = fleet.hosts.get(host)
        if info is not None and not alloc.value.need.fits(info.capacity):
            found.append(f"host/{host}: allocation {alloc.value.need} is over its capacity {info.capacity}")
    running: dict[str, list[str]] = {}
    for (host, vm), status in sorted(fleet.statuses.items()):
        if host not in fleet.alive or status.phase not in ACTIVE:
            continue
        running.setdefault(vm, []).append(host)
        placed = fleet.placements.get(vm)
        if placed is None or placed.value.host != host or status.epoch < placed.value.epoch:
            where = f"assigned to {placed.value.host} (epoch {placed.value.epoch})" if placed else "not assigned"
            found.append(f"vm/{vm}: runs on {host} (epoch {status.epoch}), {where}")
    found += [f"vm/{vm}: runs on {', '.join(hosts)} at once" for vm, hosts in sorted(running.items()) if len(hosts) > 1]
    found += [f"vm/{vm}: placed on {p.value.host}, but the fleet has no such VM"
              for vm, p in sorted(fleet.placements.items()) if ("VM", vm) not in fleet.specs]
    return found
