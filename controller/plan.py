"""Planning: desired + observed -> ordered actions. Pure: no I/O, no clock.

An empty plan means converged. Actions are ordered by phase: what a new VM
waits for (its IP, TAP, disk and QEMU, VM by VM), then the waits for SSH,
then what only keeps the host warm (refilling the pool, generating seeds),
then cleaning up. While any spec is invalid, actions that delete
are held back (and reported), since the broken file may still describe what
they would delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from .actions import PHASE_START, PHASE_VM, Action
from .model import Desired
from .observed import Observed
from .pool import plan_networks
from .seeds import plan_seed_cleanup, plan_seeds
from .vms import plan_vms, running
from .workdisks import plan_disks

# a new VM's steps, in order; image-level steps they need (a sized seed) go before all VMs
_VM_STEPS = {"ip_assign": 0, "tap_claim": 1, "disk_scratch": 2, "disk_clone": 2, "disk_grow": 2, "vm_start": 3}


def _order(action: Action) -> tuple[int, str, int]:
    """Phase order, but each new VM's steps together, VM by VM: its QEMU starts as soon as its
    own disk is ready, and its boot overlaps the provisioning of the VMs after it."""
    if action.phase in (PHASE_VM, PHASE_START):
        return (PHASE_VM, getattr(action, "vm", ""), _VM_STEPS.get(action.kind, -1))
    return (action.phase, "", 0)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    problems: tuple[str, ...] = ()
    held_back: tuple[Action, ...] = ()  # deletions suppressed while specs are invalid

    @property
    def empty(self) -> bool:
        return not self.actions


def plan(desired: Desired, observed: Observed) -> Plan:
    alive = running(observed)
    actions, problems = plan_networks(desired.networks, desired.vms, observed.net, alive)
    disk_actions, disk_problems = plan_disks(desired, observed.images, observed.disks, observed.clone_method, alive)
    vm_actions, vm_problems = plan_vms(desired, observed)
    actions += disk_actions + vm_actions + plan_seeds(desired, observed.images)
    actions += plan_seed_cleanup(desired, observed.images, observed.disks)
    problems += disk_problems + vm_problems
    actions.sort(key=_order)
    if desired.complete:
        return Plan(tuple(actions), tuple(problems))
    keep = tuple(a for a in actions if not a.deletes)
    held = tuple(a for a in actions if a.deletes)
    return Plan(keep, tuple(problems), held)
