"""Planning: desired + observed -> ordered actions. Pure: no I/O, no clock.

An empty plan means converged. While any spec is invalid, actions that delete
are held back (and reported), since the broken file may still describe what
they would delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from .actions import Action
from .model import Desired
from .observed import Observed
from .pool import plan_networks


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    problems: tuple[str, ...] = ()
    held_back: tuple[Action, ...] = ()  # deletions suppressed while specs are invalid

    @property
    def empty(self) -> bool:
        return not self.actions


def plan(desired: Desired, observed: Observed) -> Plan:
    actions, problems = plan_networks(desired.networks, desired.vms, observed.net)
    if desired.complete:
        return Plan(tuple(actions), tuple(problems))
    keep = tuple(a for a in actions if not a.deletes)
    held = tuple(a for a in actions if a.deletes)
    return Plan(keep, tuple(problems), held)
