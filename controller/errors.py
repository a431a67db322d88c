"""The two error families every layer raises, and the one-line spec error.

Drivers raise TemporaryError (worth retrying: a name taken by a racing
allocator, a VM slow to boot) or PermanentError (retrying cannot help: a bad
kernel file, a full bridge). The reconcile runner turns them into outcomes;
nothing else catches bare exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass


class WarmvmError(Exception):
    """Base for every error warmvm reports as one line, never as a traceback."""


class TemporaryError(WarmvmError):
    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(WarmvmError):
    pass


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
