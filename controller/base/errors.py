"""One error vocabulary for every layer, and the one-line spec error.

A handler returns details or raises TemporaryError (worth retrying: a name
taken by a racing allocator, a VM slow to boot, a full disk) or
PermanentError (retrying cannot help: a bad kernel file, a full bridge). Each
driver translates its own failures (OSError, a tool's exit status) into one
of them at its edge, `os_error` deciding which an OSError is; the runner turns
them into outcomes. Nothing else reaches the user, never as a traceback.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass


class WarmvmError(Exception):
    """Base for every error warmvm reports as one line, never as a traceback."""


class TemporaryError(WarmvmError):
    """Try again later; `delay` overrides the runner's backoff (None: use it)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(WarmvmError):
    pass


# conditions that pass by themselves: space or memory freed, a device released, a call interrupted
_TRANSIENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EAGAIN, errno.EBUSY, errno.EINTR,
                        errno.ETIMEDOUT, errno.ENOBUFS})


def os_error(what: str, e: OSError) -> WarmvmError:
    """The vocabulary's word for an OSError met while doing `what`."""
    reason = e.strerror or str(e)
    if e.filename is not None and str(e.filename) not in what:
        reason = f"{e.filename}: {reason}"
    message = f"{what}: {reason}"
    if e.errno in _TRANSIENT:
        return TemporaryError(message)
    return PermanentError(message)



MAX_DELAY = 5.0  # the one cap: a pass never waits longer for a retry


def backoff(attempt: int, base: float = 0.25) -> float:
    """The one backoff: doubling per attempt (1, 2, ...), capped at MAX_DELAY."""
    return float(min(base * 2.0 ** max(0, attempt - 1), MAX_DELAY))


@dataclass(frozen=True)
class SpecError:
    """One problem in one spec file, printed as `FILE:LINE: FIELD: message`."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.file}:{self.line}:{field} {self.message}"

