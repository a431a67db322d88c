"""Planning: desired + observed -> ordered actions. Pure: no I/O, no clock.

Every domain planner has the same signature, (desired, observed) -> (actions,
problems); this module runs them, binds what one domain's actions decide for
another's (the TAP a VM claims, the format of the disk made for it), and
orders the result. An empty plan means converged. Actions are ordered by
phase: what a new VM waits for (its IP, TAP, disk and QEMU, VM by VM), then
the waits for SSH, then what only keeps the host warm (refilling the pool,
generating seeds and snapshots; a snapshot only in a pass that provisions no VM), then cleaning
up.

Deleting actions are held back (and reported, with why) while a removal may
be an accident: while any spec is invalid (the broken file may still
describe what they would delete), while a spec file is empty (an editor
mid-save), while no spec describes anything at all but VMs exist (a wrong
--specs), and when a pass would remove more than half of the VMs, more than
one, until confirmed (`reconcile --confirm-removals`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..base.actions import PHASE_START, PHASE_VM, Action
from ..base.model import Desired
from ..disks.actions import DiskClone, DiskGrow, DiskScratch
from ..disks.plan import plan_disks, plan_seeds
from ..network.actions import TapClaim
from ..network.plan import plan_networks
from ..snapshots.actions import SnapshotGenerate
from ..snapshots.plan import plan_snapshots
from ..vms.actions import VmAwait, VmStart
from ..vms.plan import next_start, plan_vms
from .state import Observed

Planner = Callable[[Desired, Observed], tuple[list[Action], list[str]]]
PLANNERS: tuple[Planner, ...] = (plan_networks, plan_disks, plan_vms, plan_seeds, plan_snapshots)


def _order(action: Action) -> tuple[int, str, int]:
    """Phase order, but each new VM's steps together, VM by VM: its QEMU starts as soon as its
    own disk is ready, and its boot overlaps the provisioning of the VMs after it."""
    if action.phase in (PHASE_VM, PHASE_START):
        return (PHASE_VM, getattr(action, "vm", ""), action.step)
    return (action.phase, "", 0)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    problems: tuple[str, ...] = ()
    held_back: tuple[Action, ...] = ()  # deletions suppressed while a removal may be an accident
    holds: tuple[str, ...] = ()  # why they are held back
    wake_at: float | None = None  # when a VM that waits out its back-off may start (unix seconds)

    @property
    def empty(self) -> bool:
        return not self.actions


def plan(desired: Desired, observed: Observed) -> Plan:
    actions: list[Action] = []
    problems = [f"{key}: {why}" for key, why in sorted(observed.broken.items())]
    for planner in PLANNERS:
        acts, probs = planner(desired, observed)
        actions += acts
        problems += probs
    actions = _defer_snapshots(_bind(actions))
    actions.sort(key=_order)
    holds = holds_on_removal(desired, observed)
    wake_at = next_start(desired, observed)
    if not holds or not any(a.deletes for a in actions):
        return Plan(tuple(actions), tuple(problems), wake_at=wake_at)
    keep = tuple(a for a in actions if not a.deletes)
    held = tuple(a for a in actions if a.deletes)
    return Plan(keep, tuple(problems), held, holds, wake_at)


def holds_on_removal(desired: Desired, observed: Observed) -> tuple[str, ...]:
    """Why deleting actions must wait, if they must: the accidents a removal is most often."""
    holds: list[str] = []
    if not desired.complete:
        holds.append("specs are invalid")
    holds += [f"{name} is empty" for name in desired.empty_files]
    confirmed = desired.policy.confirm_removals
    if not desired.objects and not desired.errors and observed.vms and not confirmed:
        holds.append(f"no spec describes anything, while {len(observed.vms)} VMs exist (wrong --specs?)")
    removed = [name for name in observed.vms if name not in desired.vms]
    if len(removed) > 1 and 2 * len(removed) > len(observed.vms) and not confirmed:
        holds.append(f"{len(removed)} of {len(observed.vms)} VMs would be removed "
                     "(confirm with: warmvm reconcile --confirm-removals)")
    return tuple(holds)


def _defer_snapshots(actions: list[Action]) -> list[Action]:
    """A template's boot takes seconds: it waits for a pass in which no VM is being provisioned, so
    that a VM asked for now never waits for a snapshot to be made (it boots cold, and says why)."""
    if any(a.phase in (PHASE_VM, PHASE_START) for a in actions):
        return [a for a in actions if not isinstance(a, SnapshotGenerate)]
    return actions


def _bind(actions: list[Action]) -> list[Action]:
    """A VM starting in this pass gets the TAP and disk format its own earlier steps decide; one
    whose TAP is still to be named by the allocator starts in the next pass, from observed state."""
    taps = {a.vm: a.tap for a in actions if isinstance(a, TapClaim)}
    formats = {a.vm: a.format for a in actions if isinstance(a, DiskClone | DiskScratch | DiskGrow)}
    unbound: set[str] = set()
    out: list[Action] = []
    for action in actions:
        if isinstance(action, VmStart):
            action = replace(action, tap=taps.get(action.vm, action.tap),
                             disk_format=formats.get(action.vm, action.disk_format))
            if action.tap is None or action.disk_format is None:
                unbound.add(action.vm)
                continue
        out.append(action)
    return [a for a in out if not (isinstance(a, VmAwait) and a.vm in unbound)]
