"""The base of every action a plan is made of: a small frozen record with a stable kind.

Each domain defines its actions (network/actions.py, disks/actions.py,
vms/actions.py) on this base; a plan is an ordered list of them and `apply`
hands each to the driver that declared a handler for it. They carry
everything the driver needs, so applying never re-reads specs or guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from .kinds import Ref
from .model import Image

PHASE_SETUP, PHASE_VM, PHASE_START, PHASE_AWAIT, PHASE_WARM, PHASE_CLEANUP = range(6)


@dataclass(frozen=True)
class Action:
    kind: ClassVar[str] = "action"
    deletes: ClassVar[bool] = False  # suppressed while any spec is invalid
    phase: ClassVar[int] = PHASE_VM
    parallel: ClassVar[bool] = False  # adjacent parallel actions run at once (they touch disjoint state)
    step: ClassVar[int] = -1  # order among one new VM's steps (-1: before every VM's, e.g. a seed size they need)
    waits: ClassVar[bool] = False  # it waits on something slow (a guest's boot): the daemon runs it in the background

    about: ClassVar[tuple[str, str]] = ("vm", "vm")  # the object it acts on: (kind shown, field naming it)

    @property
    def subject(self) -> str:
        kind, field = self.about
        value = getattr(self, field)
        return str(Ref(kind, value.name if isinstance(value, Image) else str(value)))

    def describe(self) -> str:
        details = " ".join(f"{f.name}={_short(getattr(self, f.name))}" for f in fields(self)
                           if f.name not in ("network", "vm") and getattr(self, f.name) is not None)
        return f"{self.kind} {self.subject} {details}".rstrip()


def _short(value: object) -> str:
    if isinstance(value, Image):
        return value.name
    if isinstance(value, tuple) and len(value) > 4:
        return f"{','.join(map(str, value[:3]))},...(+{len(value) - 3})"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, Path):
        return value.name
    return str(value)


Details = dict[str, Any]  # what a handler reports for the lifecycle log
Handler = Callable[[Any], Details]  # takes the one action type it is registered for
Handlers = dict[type["Action"], Handler]  # what a driver declares it applies
