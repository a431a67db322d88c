"""The daemon's status on its state directory, for `warmvm get daemon`: who runs, its last pass."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import records
from ..base.errors import WarmvmError
from ..statedir.store import read_json, write_json


@dataclass
class DaemonStatus:
    pid: int
    started: float
    passes: int = 0
    last_pass: float | None = None
    woken_by: list[str] = field(default_factory=list)
    last_ms: float | None = None
    converged: bool | None = None
    last_error: str | None = None

    def save(self, path: Path, scratch: Path) -> None:
        write_json(path, records.to_dict(self), scratch)


def read_status(path: Path) -> dict[str, Any]:
    """The last status written, and whether its daemon still runs (its pid, running `watch` or `agent`)."""
    try:
        data = read_json(path)
    except WarmvmError as e:
        return {"running": False, "last_error": str(e)}
    if data is None:
        return {"running": False}
    pid = data.get("pid")
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        running = b"watch" in argv or b"agent" in argv
    except (OSError, TypeError):
        running = False
    last = data.get("last_pass")
    return {**data, "running": running, "last_pass_ago_s": round(time.time() - last, 1) if last else None}


def this_process() -> DaemonStatus:
    return DaemonStatus(os.getpid(), time.time())
