"""What failed for good, remembered across passes and daemon restarts (state/retries.json).

An action that raised PermanentError cannot succeed by being tried again at once; before, a daemon
forgot that at its next wake-up and tried it at every pass. Now each such failure is recorded with
how many times in a row it failed and when it may be tried again (30 s, doubling to 10 min): the
daemon waits it out, a one-shot `reconcile` (an operator asking now) tries it at once and counts.
An action is known by its kind, its subject and a digest of everything it carries, so a changed
spec (another action) starts afresh; one no longer planned is forgotten, and so is one that worked.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..base import records
from ..base.actions import Action
from ..base.errors import PermanentError
from ..statedir.store import read_json, write_json

FIRST_WAIT = 30.0
MAX_WAIT = 600.0


def wait_after(failures: int) -> float:
    return min(MAX_WAIT, FIRST_WAIT * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True, kw_only=True)
class Failed:
    LABEL: ClassVar[str] = "failed action"

    action: str  # what it was, as the lifecycle log names it
    failures: int
    error: str
    retry_at: float  # unix seconds


def key(action: Action) -> str:
    digest = hashlib.sha256(repr(action).encode()).hexdigest()[:12]
    return f"{action.kind} {action.subject} {digest}"


class Retries:
    """The memory, read at the start of a reconcile and written back at its end if it changed."""

    def __init__(self, path: Path, scratch: Path) -> None:
        self.path, self.scratch = path, scratch
        self.failed: dict[str, Failed] = _read(path)
        self.changed = False
        self.lock = threading.Lock()  # actions end on the passes' worker threads and the daemon's boot waits

    def waiting(self, action: Action, now: float) -> Failed | None:
        entry = self.failed.get(key(action))
        return entry if entry is not None and entry.retry_at > now else None

    def record(self, action: Action, error: str, now: float) -> None:
        k = key(action)
        with self.lock:
            failures = self.failed[k].failures + 1 if k in self.failed else 1
            self.failed[k] = Failed(action=f"{action.kind} {action.subject}", failures=failures, error=error,
                                    retry_at=now + wait_after(failures))
            self.changed = True

    def worked(self, action: Action) -> None:
        with self.lock:
            if self.failed.pop(key(action), None) is not None:
                self.changed = True

    def keep(self, planned: tuple[Action, ...]) -> None:
        """Forgets what is no longer planned."""
        wanted = {key(a) for a in planned}
        with self.lock:
            for k in [k for k in self.failed if k not in wanted]:
                del self.failed[k]
                self.changed = True

    def next_due(self, now: float) -> float | None:
        """The next wait to end (one over already is not: it is tried, or blocked, in this pass)."""
        with self.lock:
            return min((f.retry_at for f in self.failed.values() if f.retry_at > now), default=None)

    def save(self) -> None:
        with self.lock:
            if not self.changed:
                return
            data = {k: records.to_dict(f) for k, f in sorted(self.failed.items())}
            self.changed = False
        write_json(self.path, data, self.scratch)


def _read(path: Path) -> dict[str, Failed]:
    try:
        data = read_json(path) or {}
    except PermanentError:
        return {}  # damaged: a memory of failures is not worth refusing to run for
    out: dict[str, Failed] = {}
    for k, value in data.items():
        try:
            out[k] = records.from_dict(Failed, _mapping(value), str(path))
        except PermanentError:
            continue
    return out


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}

