"""The store driver: the state directory, its lock, and atomic records.

Most state is observed (devices, files, processes); what must be stored (IP
leases, VM records, seed fingerprints) is small JSON written atomically:
temp file, fsync, rename, fsync of the directory, so a kill -9 at any point
leaves either the old record or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.errors import PermanentError


class LockTimeout(PermanentError):
    pass


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    @contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Exclusive lock on the state directory; waits up to `timeout` seconds."""
        self.ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{self.root}: another warmvm holds the lock; gave up after {timeout:g}s "
                                          "(--lock-timeout)") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None when there is none (a torn one cannot exist: records are renamed into place)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PermanentError(f"{path}: unreadable record: {e}") from None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any], durable: bool = True) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", durable=durable)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace `path` whole. The rename alone survives a kill -9 of this process; `durable` adds
    the fsyncs that also survive a crash of the machine (skip them for state that dies with it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with replacing(path, path.parent, durable) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)


@contextmanager
def replacing(dest: Path, scratch: Path, durable: bool = True) -> Iterator[Path]:
    """The one way a file is replaced: the block writes a new temporary file in `scratch` (on dest's
    file system), which is renamed over `dest` only if the block succeeds, and removed otherwise."""
    # beside dest: hidden, so no listing mistakes it for a record; in a scratch area: named after dest
    prefix = f".{dest.name}.tmp-" if scratch == dest.parent else f"{dest.name}."
    fd, name = tempfile.mkstemp(dir=scratch, prefix=prefix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, dest)
        if durable:
            fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
