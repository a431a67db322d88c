"""`warmvm verify`: the leak audit. Desired + observed + host facts -> findings. Pure.

Run after a reconcile has converged (and by operators at any time): what
warmvm made and no spec explains any more is a leak, and after convergence
a leak is a reconciler bug. Idle pool TAPs are capacity, never leaks; trash
entries within their retention are kept on purpose; devices that are not
ours are listed apart.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ..base.kinds import BootMode
from ..base.model import Desired
from ..disks.actions import SeedDelete
from ..disks.plan import plan_seed_cleanup
from ..engine.state import Observed
from ..snapshots.actions import SnapshotDelete
from ..snapshots.plan import plan_snapshots
from .observe import HostFacts


@dataclass(frozen=True)
class Finding:
    kind: str  # tap, bridge, pool, disk, lease, vm-dir, image-dir, seed, snapshot, trash, qemu, tmp, mount, loop
    name: str
    why: str


@dataclass(frozen=True)
class Capacity:
    network: str
    idle: int
    size: int


@dataclass(frozen=True)
class Report:
    capacity: tuple[Capacity, ...]
    leaks: tuple[Finding, ...]
    foreign: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.leaks

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "capacity": [asdict(c) for c in self.capacity],
                "leaks": [asdict(f) for f in self.leaks], "foreign": [asdict(f) for f in self.foreign]}


def verify(desired: Desired, observed: Observed, facts: HostFacts, vms_dir: str) -> Report:
    leaks = [*_network(desired, observed), *_vm_files(desired, observed, facts), *_seeds(desired, observed),
             *_snapshots(desired, observed), *_processes(desired, facts, vms_dir),
             *_leftovers(desired, observed, facts)]
    capacity = tuple(Capacity(n.name, len(observed.net.idle_taps(n.name)), n.pool_size)
                     for n in sorted(desired.networks.values(), key=lambda n: n.name))
    return Report(capacity, tuple(leaks), tuple(_foreign(desired, observed, facts)))


def _network(desired: Desired, observed: Observed) -> list[Finding]:
    out = []
    bridges = {b.owner: b for b in observed.net.bridges.values() if b.owner}
    for owner, ours in sorted(bridges.items()):
        if owner not in desired.networks:
            out.append(Finding("bridge", ours.name, f"ours, of network {owner!r}, which no spec has"))
        elif not ours.up:
            out.append(Finding("bridge", ours.name, "ours and down"))
    for tap in sorted(observed.net.taps, key=lambda t: t.name):
        vm, net = tap.mark.vm, desired.networks.get(tap.mark.network)
        bridge = bridges.get(tap.mark.network)
        if vm is not None and vm not in desired.vms:
            out.append(Finding("tap", tap.name, f"held for vm/{vm}, which no longer exists"))
        elif net is None:
            out.append(Finding("tap", tap.name, f"of network {tap.mark.network!r}, which no spec has"))
        elif bridge is None or tap.master != bridge.index:
            out.append(Finding("tap", tap.name, f"detached from {net.bridge}"))
        elif not tap.up:
            out.append(Finding("tap", tap.name, "down"))
    firewall = observed.net.firewall
    if firewall is not None and firewall.present and not observed.net.taps:
        out.append(Finding("firewall", firewall.table, "our nftables tables, with no TAP of ours left"))
    for net in sorted(desired.networks.values(), key=lambda n: n.name):
        surplus = len(observed.net.idle_taps(net.name)) - net.pool_size
        if surplus > 0:
            out.append(Finding("pool", net.name, f"{surplus} idle TAPs more than its size {net.pool_size}"))
    return out


def _vm_files(desired: Desired, observed: Observed, facts: HostFacts) -> list[Finding]:
    out = []
    for name in facts.vm_dirs:
        if name in desired.vms:
            continue
        if name in observed.disks:
            out.append(Finding("disk", name, "a work disk of no VM"))
        elif name in observed.vms:
            out.append(Finding("lease", name, f"IP {observed.vms[name].record.ip} leased to no VM"))
        else:
            out.append(Finding("vm-dir", name, "a VM directory of no VM"))
    for name, state in sorted(observed.vms.items()):
        if name in desired.vms and state.saved_size is not None:
            if not state.resumable:
                out.append(Finding("state", name, "a saved state (suspend.state) its record does not vouch for"))
            elif state.alive and not state.record.suspending and state.record.boot != BootMode.RESUME:
                out.append(Finding("state", name, "a saved state beside a running QEMU that was not suspending"))
        elif name in desired.vms and state.record.saved is not None and not state.alive:
            out.append(Finding("state", name, "its record names a saved state, and there is none"))
    for entry in observed.trash:
        if entry.removed_at + desired.policy.retain_removed <= observed.now:
            out.append(Finding("trash", entry.path.name, "past its retention"))
    return out


def _seeds(desired: Desired, observed: Observed) -> list[Finding]:
    out = []
    trashed = frozenset(e.seed for e in observed.trash if e.seed is not None)
    for action in plan_seed_cleanup(desired, observed.images, observed.disks, trashed):
        if isinstance(action, SeedDelete):
            out += [Finding("seed", f"{action.image}/{f.name}", "used by no image or disk") for f in action.files]
    return out


def _snapshots(desired: Desired, observed: Observed) -> list[Finding]:
    actions, _ = plan_snapshots(desired, observed)
    return [Finding("snapshot", f"{a.image}/{f.name}", "wanted by no VM, or made from other inputs")
            for a in actions if isinstance(a, SnapshotDelete) for f in a.files]


def _processes(desired: Desired, facts: HostFacts, vms_dir: str) -> list[Finding]:
    out = []
    for qemu in facts.qemus:
        directory, name = os.path.split(os.path.dirname(qemu.pidfile))
        vm = desired.vms.get(name) if directory == vms_dir and os.path.basename(qemu.pidfile) == "qemu.pid" \
            else None
        if vm is None:
            out.append(Finding("qemu", str(qemu.pid), f"runs with pid file {qemu.pidfile}, of no VM"))
        elif not vm.running:
            out.append(Finding("qemu", str(qemu.pid), f"vm/{name} runs, but its spec says running: false"))
    return out


def _leftovers(desired: Desired, observed: Observed, facts: HostFacts) -> list[Finding]:
    out = [Finding("tmp", name, "left in the state's tmp area") for name in facts.tmp]
    out += [Finding("mount", m, "a mount into the state directory") for m in facts.mounts]
    out += [Finding("loop", loop, "a loop device on a file of the state directory") for loop in facts.loops]
    images = set(desired.images) | {d.image for d in observed.disks.values()}
    out += [Finding("image-dir", name, "an image directory of no image and no disk")
            for name in facts.image_dirs
            if name not in images and not (name in observed.images and observed.images[name].seeds)]
    return out


def _foreign(desired: Desired, observed: Observed, facts: HostFacts) -> list[Finding]:
    out = [Finding("device", f.name, f.why) for f in facts.marked_by_others]
    ours = {t.name for t in observed.net.taps} | {b.name for b in observed.net.bridges.values() if b.owner}
    others = {f.name for f in facts.marked_by_others}
    for net in sorted(desired.networks.values(), key=lambda n: n.name):
        for name in sorted(observed.net.names):
            if name.startswith(net.pool_prefix) and name not in ours and name not in others:
                out.append(Finding("device", name, f"carries pool prefix {net.pool_prefix!r} without our mark: "
                                                   "skipped, never used or deleted"))
    for tap in observed.net.legacy:
        out.append(Finding("device", tap.name, "marked before marks named their instance; not adopted"))
    return out
