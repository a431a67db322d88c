"""The store: the state directory, its lock, its instance identity, and atomic records.

Most state is observed (devices, files, processes); what must be stored (IP
leases, VM records, seed fingerprints) is small JSON written atomically:
temp file in the state's own tmp area, fsync, rename, fsync of the
directory, so a kill -9 or a power cut at any point leaves either the old
record or the new one, never a torn or empty one, and a half-written file
only ever in tmp/, which the next pass empties.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..base.errors import PermanentError
from .safety import unsafe_reason


class LockTimeout(PermanentError):
    pass


INSTANCE = re.compile(r"^[0-9a-f]{8}$")


class Store:
    def __init__(self, root: Path) -> None:
        # one identity however it is spelt: a relative path, another working directory, a symlink
        self.root = Path(os.path.realpath(root))

    def trusted(self) -> None:
        """Refuses a state directory another user could tamper with (sshd's StrictModes, see safety.py):
        what is in it decides which files, devices and processes root acts on."""
        reason = unsafe_reason(self.root)
        if reason is not None:
            raise PermanentError(f"state directory refused: {reason} (chown root and chmod go-w)")

    def ensure(self) -> None:
        self.trusted()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    @contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Exclusive lock on the state directory; waits up to `timeout` seconds."""
        self.ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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


    @contextmanager
    def held(self, path: Path, who: str) -> Iterator[None]:
        """An exclusive lock on `path` for as long as the block runs (a daemon's lifetime); refused at
        once if another process holds it."""
        self.ensure()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise PermanentError(f"{self.root}: {who} runs on it already; not starting a second one") from None
            yield
        finally:
            os.close(fd)

    def instance(self, create: bool) -> str | None:
        """This state directory's identity, carried in every mark warmvm puts on a device, so that
        two instances on one host never touch each other's devices. Made once, with the directory."""
        path = self.root / "instance"
        try:
            found = path.read_text().strip()
        except FileNotFoundError:
            if not create:
                return None
            atomic_write(path, (secrets.token_hex(4) + "\n").encode(), self.root / "tmp")
            found = path.read_text().strip()
        if not INSTANCE.match(found):
            raise PermanentError(f"{path}: not an instance identity ({found[:20]!r})")
        return found


def read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None when there is none (a torn one cannot exist: records are renamed into place)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PermanentError(f"{path}: unreadable record: {e}") from None
    except OSError as e:
        raise PermanentError(f"{path}: unreadable record: {e.strerror}") from None
    if not isinstance(data, dict):
        raise PermanentError(f"{path}: unreadable record: not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any], scratch: Path) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", scratch)


def atomic_write(path: Path, data: bytes, scratch: Path, mode: int = 0o600) -> None:
    """Replace `path` whole, durably, through a temporary file in `scratch` (the state's tmp area)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    with replacing(path, scratch) as tmp:
        tmp.write_bytes(data)  # mkstemp made it (O_EXCL, 0600): no link to follow
        os.chmod(tmp, mode)


@contextmanager
def replacing(dest: Path, scratch: Path) -> Iterator[Path]:
    """The one way a file is replaced: the block writes a new temporary file in `scratch` (on dest's
    file system), which is renamed over `dest` only if the block succeeds, and removed otherwise."""
    # beside dest: hidden, so no listing mistakes it for a record; in a scratch area: named after dest
    # and its writer, so that a clean-up never takes a file a live writer is still making
    prefix = f".{dest.name}.tmp-" if scratch == dest.parent else scratch_prefix(dest.name)
    fd, name = tempfile.mkstemp(dir=scratch, prefix=prefix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


_WRITER = re.compile(r"\.(\d+)\.[A-Za-z0-9_]+$")


def scratch_prefix(stem: str) -> str:
    """The name prefix of anything made in the state's tmp area: it names this process, its writer."""
    return f"{stem}.{os.getpid()}."


def writer_alive(name: str) -> bool:
    """Whether the process that made this tmp entry (by its name) still runs; False for names of
    no known writer (made before names carried one)."""
    m = _WRITER.search(name)
    if m is None:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(file: int | Path) -> str:
    """The digest of a file (never through a link), or of an open one read from its start, whose
    offset is left at the start again."""
    if isinstance(file, Path):
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return sha256(fd)
        finally:
            os.close(fd)
    os.lseek(file, 0, os.SEEK_SET)
    with open(file, "rb", closefd=False) as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    os.lseek(file, 0, os.SEEK_SET)
    return digest
