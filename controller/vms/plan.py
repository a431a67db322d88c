"""VM planning: leases, boots, readiness and removal. Pure.

A VM with an image gets an IP lease (its first step), then (through the pool
and disk planners) its TAP and work disk, then QEMU, then a wait for its
readiness (its agent over the control channel, else SSH). A QEMU that died is
started again; one that is never ready is killed by the wait and started
again, up to BOOT_ATTEMPTS times, then the VM is Failed until its spec
changes. A guest that was ready and exits is started again, at once the
first time, then after a back-off that doubles with each exit in a row
(recorded: it outlives the daemon; a new spec starts it at once). A VM whose
spec says suspended has its state saved and its QEMU gone, and resumes from
it once the spec says so again. A VM whose spec goes is stopped; once
stopped, its TAP is released by the network planner and its directory (disk
and lease) moved to the trash, where it is kept for the retention time: a VM
of that name that comes back gets it back. With no retention, its disk is
deleted and then its record (and IP). A VM whose records cannot be read is
left alone, whatever its spec says.
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv4Interface

from ..base import uids
from ..base.actions import Action
from ..base.kinds import Accel, BootMode, Ref
from ..base.model import VM, Desired, Network
from ..base.units import human
from ..disks.plan import Budget, reserve
from ..disks.state import StateSpace
from ..snapshots.state import Shape, Snapshot
from .actions import (
    REMOVED,
    IpAssign,
    TrashExpire,
    VmAwait,
    VmContinue,
    VmExited,
    VmForget,
    VmRestore,
    VmStart,
    VmStop,
    VmSuspend,
    VmTrash,
)
from .state import BOOT_ATTEMPTS, VmRecord, VmState, VmsView


def spec_hash(vm: VM) -> str:
    """What a running VM was started with; a change means a restart (the image is not in it:
    a new image or seed affects new VMs only)."""
    key = f"{vm.network}|{vm.vcpus}|{vm.memory}|{vm.accel}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def plan_vms(desired: Desired, observed: VmsView) -> tuple[list[Action], list[str]]:
    actions: list[Action] = []
    problems: list[str] = []
    leased = {(s.record.network, IPv4Address(s.record.ip)): n for n, s in observed.vms.items()}
    uids = Uids(observed)
    retention = desired.policy.retain_removed
    for vm in sorted(desired.vms.values(), key=lambda v: v.name):
        if vm.image is None or vm.name in observed.broken_vms:
            continue  # a network-only VM holds a TAP and nothing else; a broken one waits for its operator
        net = desired.networks[vm.network]
        state = observed.vms.get(vm.name)
        entry = observed.restorable(vm.name, retention)
        if entry is not None:
            actions.append(_restore(vm, net, entry.removed_at, entry.record, leased))
            continue
        if state is not None and state.alive and state.record.network != vm.network:
            actions.append(VmStop(vm.name, "spec changed"))  # moved: leased anew only once stopped
            continue
        if state is None or state.record.network != vm.network:
            ip = _lease(vm, net, leased)
            if ip is None:
                problems.append(f"{Ref.vm(vm.name)}: no free address in {net.cidr}"
                                + (f" ({vm.ip} is leased to {leased.get((vm.network, vm.ip))})" if vm.ip else ""))
                continue
            leased[(vm.network, ip)] = vm.name
            uid = uids.lease(state.record.uid if state else None)
            actions.append(IpAssign(vm.name, vm.network, ip, uid))
            acts, problem = _boot(vm, desired, net, ip, uid, observed)
            actions += acts
            problems += [f"{Ref.vm(vm.name)}: {problem}"] if problem else []
            continue
        acts, problem = _converge(vm, desired, net, state, uids, observed)
        actions += acts
        if problem:
            problems.append(f"{Ref.vm(vm.name)}: {problem}")
    for name, state in sorted(observed.vms.items()):
        if name not in desired.vms and name not in observed.broken_vms:
            actions += _remove(name, state, observed, retention)
    actions += [TrashExpire(e.vm, e.removed_at) for e in observed.trash if e.removed_at + retention <= observed.now]
    return _fit_suspends(desired, observed, actions, problems)


def _restore(vm: VM, net: Network, removed_at: int, old: VmRecord | None,
             leased: dict[tuple[str, IPv4Address], str]) -> Action:
    """Its old address if it is still on this network, free, and what its spec asks; else a new one."""
    ip = IPv4Address(old.ip) if old is not None and old.network == vm.network else None
    if ip is None or leased.get((vm.network, ip), vm.name) != vm.name or (vm.ip is not None and vm.ip != ip):
        ip = _lease(vm, net, leased)
    if ip is not None:
        leased[(vm.network, ip)] = vm.name
    return VmRestore(vm.name, removed_at, vm.network, ip)  # no address free: its disk comes back all the same


def _lease(vm: VM, net: Network, leased: dict[tuple[str, IPv4Address], str]) -> IPv4Address | None:
    if vm.ip is not None:
        return vm.ip if leased.get((vm.network, vm.ip), vm.name) == vm.name else None
    for host in net.cidr.hosts():
        if host != net.gateway and (vm.network, host) not in leased:
            return host
    return None


def _boot(vm: VM, desired: Desired, net: Network, ip: IPv4Address, uid: int | None,
          observed: VmsView, state: VmState | None = None) -> tuple[list[Action], str | None]:
    """Start and await; the TAP and disk format come from what is observed, or else from this
    pass's own claim and disk actions (bound by the engine's planner). The accelerator and how it
    boots are decided here, from the host's capabilities: `warmvm plan` shows them."""
    if not vm.running or vm.image is None or vm.suspended:
        return [], None
    accel = observed.host.accel(vm.accel)
    if accel is None:
        return [], "accel: kvm was asked for, but KVM is not usable on this host"
    if uid is None:
        return [], "no uid of this instance's block is free for its QEMU"
    address = IPv4Interface(f"{ip}/{net.cidr.prefixlen}")
    image = desired.images[vm.image]
    tap = observed.net.vm_taps().get(vm.name)
    disk = observed.disks.get(vm.name)
    resume, cold_because = _resume(vm, accel, state)
    snapshot, not_restored = (None, None) if resume or cold_because else _snapshot(vm, accel, observed)
    tsc_khz = (snapshot.record.tsc_khz if snapshot else observed.host.tsc_khz) if accel == Accel.TCG else None
    start = VmStart(vm=vm.name, image=image, tap=tap.name if tap else None, disk_format=disk.format if disk else None,
                    address=address, gateway=net.gateway, vcpus=vm.vcpus, memory=vm.memory, accel=accel,
                    tsc_khz=tsc_khz, spec=spec_hash(vm), snapshot=snapshot, cold_because=cold_because or not_restored,
                    uid=uid, resume=resume or None)
    return [start, VmAwait(vm.name, ip, snapshot, resume or None)], None


def _fit_suspends(desired: Desired, observed: VmsView, actions: list[Action],
                  problems: list[str]) -> tuple[list[Action], list[str]]:
    """New suspends, by name, while their saved states (each up to its guest's memory) leave the
    reserve free and the work disks the room they may fill under the overcommit policy; one that does
    not fit is not begun (its guest runs on) and says why. One a killed run began is always finished."""
    if observed.space is None:
        return actions, problems
    disks = observed.disks.values()
    used, virtual = sum(d.allocated for d in disks), sum(d.size for d in disks)
    taken, kept = 0, []
    for action in actions:
        state = observed.vms.get(action.vm) if isinstance(action, VmSuspend) else None
        if not isinstance(action, VmSuspend) or state is None or state.record.suspending:
            kept.append(action)
            continue
        after = StateSpace(size=observed.space.size, free=observed.space.free - taken - action.memory)
        room = Budget(desired.policy.disk_overcommit, after, used=used, virtual=virtual)
        short = max(room.virtual - room.limit, reserve(after.size) - after.free)
        if short > 0:
            problems.append(f"{Ref.vm(action.vm)}: suspended: not saved, it runs on: its state (up to "
                            f"{human(action.memory)}) does not fit the state file system: {human(short)} short "
                            f"(--disk-overcommit {room.ratio:g}, the reserve {human(reserve(after.size))})")
            continue
        taken += action.memory
        kept.append(action)
    return kept, problems


def _resume(vm: VM, accel: Accel, state: VmState | None) -> tuple[bool, str | None]:
    """Whether it resumes from its own saved state; else, if it has one, why not (the state is put
    aside: a guest that ran on since may never be given an older memory again)."""
    if state is None or state.saved_size is None:
        return False, None
    if not state.resumable:
        return False, "its saved state has no record of being complete: put aside, it boots cold"
    if state.record.spec != spec_hash(vm) or state.record.accel != accel:
        return False, "its spec changed since it was suspended: its saved state is put aside, it boots cold"
    return True, None


def _snapshot(vm: VM, accel: Accel, observed: VmsView) -> tuple[Snapshot | None, str | None]:
    """The snapshot a VM with `boot: restore` is restored from, or why it boots cold."""
    if vm.boot != BootMode.RESTORE or vm.image is None:
        return None, None
    snapshot = observed.snapshots.ready(vm.image, Shape(vm.memory, vm.vcpus, vm.accel))
    if snapshot is None:
        return None, "its snapshot is not ready yet"
    state = observed.vms.get(vm.name)
    if state is not None and state.record.restore_failed == snapshot.record.fingerprint:
        return None, f"its restore from snapshot {snapshot.record.fingerprint} failed before"
    if snapshot.record.accel != accel:
        return None, f"snapshot {snapshot} was made for {snapshot.record.accel}"
    return snapshot, None


def _converge(vm: VM, desired: Desired, net: Network, state: VmState, uids: Uids,
              observed: VmsView) -> tuple[list[Action], str | None]:
    record = state.record
    ip = IPv4Address(record.ip)
    if vm.ip is not None and vm.ip != ip:
        return [], f"spec.ip {vm.ip} differs from its lease {ip}: an address is never changed under a VM"
    if not vm.running:
        return ([VmStop(vm.name, "running: false")] if state.alive else []), None
    if vm.suspended and state.alive and (state.ready or record.suspending):
        return [VmSuspend(vm.name, vm.memory)], None  # (also what finishes a suspend a killed run began)
    if vm.suspended and not state.alive:
        return [], None
    if not vm.suspended and state.alive and record.suspending:
        return [VmContinue(vm.name)], None  # paused by a suspend a killed run began, no longer asked for
    if state.alive and record.spec != spec_hash(vm):
        return [VmStop(vm.name, "spec changed")], None
    if state.alive:
        return ([] if state.ready else [VmAwait(vm.name, ip)]), None
    if record.pid is not None and record.ready is not None:
        return [VmExited(vm.name)], None  # it was ready, and exited unasked: counted before it starts again
    if record.attempts >= BOOT_ATTEMPTS and record.spec == spec_hash(vm):
        return [], f"Failed: {record.failure}"
    if backing_off(vm, record, observed.now):
        return [], f"{_exits(record)}next start in {record.retry_at - observed.now:.0f}s"  # type: ignore[operator]
    return _boot(vm, desired, net, ip, uids.lease(record.uid), observed, state)


class Uids:
    """The uids VMs hold (their records', and those of VMs in the trash, which may come back): a VM
    keeps its own; one that has none (new, or made before uids were per VM) gets the lowest free."""

    def __init__(self, observed: VmsView) -> None:
        self.instance = observed.net.instance
        held = [s.record.uid for s in observed.vms.values()] + [e.record.uid for e in observed.trash if e.record]
        self.used = {uid for uid in held if uid is not None}

    def lease(self, own: int | None) -> int | None:
        if own is not None or self.instance is None:
            return own
        uid = uids.lease(self.instance, self.used)
        if uid is not None:
            self.used.add(uid)
        return uid


def backing_off(vm: VM, record: VmRecord, now: float) -> bool:
    """Whether a stopped VM waits out its back-off (a new spec starts it at once)."""
    return record.retry_at is not None and record.retry_at > now and record.spec == spec_hash(vm)


def next_start(desired: Desired, observed: VmsView) -> float | None:
    """When the first VM that waits out its back-off may start: the daemon's next wake-up."""
    due = [s.record.retry_at for name, s in observed.vms.items() if name in desired.vms and not s.alive
           and desired.vms[name].running and backing_off(desired.vms[name], s.record, observed.now)]
    return min(due) if due else None  # type: ignore[type-var]


def _exits(record: VmRecord) -> str:
    if record.exits > 1:
        return f"exited {record.exits} times in a row ({record.failure}); "
    return f"{record.failure}; " if record.failure else ""


def _remove(name: str, state: VmState, observed: VmsView, retention: float) -> list[Action]:
    if state.alive:
        return [VmStop(name, REMOVED)]
    if name in observed.disks and retention > 0:
        return [VmTrash(name)]  # its TAP is released beside it, by the network planner
    holds_tap = name in observed.net.vm_taps()
    if name not in observed.disks and not holds_tap:
        return [VmForget(name)]
    return []


def phase(name: str, vm: VM | None, observed: VmsView) -> tuple[str, str]:
    """The VM's phase as users see it, and why, derived from what is observed."""
    state = observed.vms.get(name)
    if vm is None:
        return ("Stopping", "spec removed") if state and state.alive else ("Stopping", "releasing its resources")
    if vm.image is None:
        return ("Running", "network only") if name in observed.net.vm_taps() else ("Pending", "")
    if state is None:
        return "Pending", ""
    record = state.record
    if vm.suspended and vm.running:
        if state.alive:
            return "Suspending", ""
        return "Suspended", (f"saved state {state.saved_size >> 20} MiB" if state.resumable and state.saved_size
                             else "no saved state: it boots cold once resumed")
    if state.ready:
        return "Running", ""
    if state.alive:
        return "Booting", ""
    if not vm.running:
        provisioned = name in observed.disks and name in observed.net.vm_taps()
        return ("Stopped", "running: false") if provisioned else ("Provisioning", "")
    if record.attempts >= BOOT_ATTEMPTS and record.spec == spec_hash(vm):
        return "Failed", record.failure or ""
    if backing_off(vm, record, observed.now):
        wait = f"next start in {record.retry_at - observed.now:.0f}s"  # type: ignore[operator]
        return ("CrashLoop" if record.exits > 1 else "Provisioning"), _exits(record) + wait
    return "Provisioning", record.failure or ""
