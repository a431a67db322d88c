"""A guest's whole state saved to a file and loaded back (QMP migrate to and from an fd), and the
identity a copy restored from a snapshot is told it is."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface

from ...base.errors import PermanentError
from .qmp import Qmp


def save_state(session: Qmp, out: int, timeout: float) -> None:
    """The guest paused and its whole state written to the open file `out` (QMP migrate to an fd:
    QEMU's sandbox forbids spawning the `exec:` helper)."""
    session.run("stop")
    session.run("migrate-set-parameters", **{"max-bandwidth": 1 << 40})  # a file, not a network link
    session.run("getfd", fd=out, fdname="state")
    session.run("migrate", uri="fd:state")
    try:
        _await_migration(session, timeout, "saving")
    except OSError:
        session.run("migrate_cancel")  # else QEMU writes on into the file given up, and refuses a new save
        raise


def load_state(session: Qmp, source: int, timeout: float, run: bool = True) -> None:
    """A QEMU started with `-incoming defer` loads a saved state from the open file `source`, then
    runs it (the template was saved paused, and QEMU restores it paused); `run=False`: the caller
    lets it run (after what must come first)."""
    session.run("getfd", fd=source, fdname="state")
    session.run("migrate-incoming", uri="fd:state")
    _await_migration(session, timeout, "loading")
    if run and session.run("query-status")["status"] != "running":
        session.run("cont")


def _await_migration(session: Qmp, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (info := session.run("query-migrate")).get("status") != "completed":
        if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
            raise OSError(f"{what} the state: {info.get('error-desc') or info.get('status') or 'timed out'}")
        time.sleep(0.005)




IDENTITY_SIZE = 4096  # fixed: the guest's fw_cfg driver caches each entry's size from the template
TEMPLATE_IDENTITY = b"warmvm-template\n".ljust(IDENTITY_SIZE, b"\0")


@dataclass(frozen=True)
class Identity:
    """What makes a restored copy this VM (hack/image/identity.c reads it)."""

    hostname: str
    address: IPv4Interface
    gateway: str
    mac: str
    host_key: bytes  # dropbear's format

    def entry(self) -> bytes:
        """The fw_cfg entry, made at each start: fresh entropy for the guest's RNG, the host's clock."""
        text = (f"warmvm-identity\nhostname={self.hostname}\nip={self.address}\ngw={self.gateway}\nmac={self.mac}\n"
                f"time={time.time_ns()}\nseed={os.urandom(64).hex()}\nhostkey={self.host_key.hex()}\n").encode()
        if len(text) > IDENTITY_SIZE:
            raise PermanentError(f"the identity of {self.hostname} does not fit in {IDENTITY_SIZE} bytes")
        return text.ljust(IDENTITY_SIZE, b"\0")
