"""The vocabulary of `warmvm doctor`: a check (name, status, one-line finding, what to do), what
every check reads, and the table they are shown in."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..base.model import Desired
from ..engine.state import Observed
from ..statedir.layout import Layout

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    finding: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    desired: Desired
    observed: Observed
    layout: Layout
    deep: bool


def table(checks: list[Check]) -> str:
    width = max([len(c.name) for c in checks] + [5])
    lines = [f"{'CHECK':<{width}}  STATUS  FINDING"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status.upper():<6}  {c.finding}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<{width}}          fix: {c.fix}")
    fails, warns = (sum(1 for c in checks if c.status == s) for s in (FAIL, WARN))
    lines.append(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines)
