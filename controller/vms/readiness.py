"""When a booting VM is Running: its guest's agent says so over the control channel (sshd listens,
the work disk is mounted, init finished), with no login of the controller's; else one SSH login, as
before (adapters/ssh.py): for an image without the agent, or a channel that failed.

The channel is asked every 25 ms; an answer costs the guest no fork. Its answer is the guest's
word about itself, as the console's ready line is: a guest that lies only misreports its own
readiness. A guest whose agent does not say ready within GRACE of the console's ready line (or of
its SSH port opening, for a guest that marks nothing) is tried over SSH; so is one whose channel
misbehaved (closed at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..adapters import guest, ssh
from ..base.kinds import Readiness
from ..statedir.layout import VmFiles

GRACE = 3.0  # seconds the agent has, after the guest looks ready otherwise, before SSH decides
STEP = 0.025  # one step of the channel's watch: the console is read, and the QEMU checked, between two


def await_ready(files: VmFiles, key: Path, ip: str, deadline: float, timeline: ssh.Timeline,
                alive: Callable[[], bool], pin: ssh.Pin) -> tuple[Readiness | None, str | None]:
    """How the boot was found ready (None: not by the deadline, or its QEMU died), and, when SSH had
    to decide, why the channel did not."""
    watch = guest.StatusWatch(files.ctl)
    hint = ssh.Hint(ip, timeline)
    hinted: float | None = None
    try:
        while time.monotonic() < deadline and watch.error is None:
            if not alive():
                return None, None
            if watch.step(STEP) is not None:
                return Readiness.CHANNEL, None
            # no port probe once an agent answers: a connection costs the guest a forked sshd
            if hinted is None and hint(probe=not watch.answered):
                hinted = time.monotonic()
            if hinted is not None and time.monotonic() - hinted >= GRACE:
                break
    finally:
        watch.close()  # QEMU serves one client at a time: the user's `warmvm exec` may be next
    why = (f"channel: {watch.error}" if watch.error else
           f"its agent did not say ready ({watch.last})" if watch.answered else "no guest agent answered")
    if ssh.wait_ready(key, ip, deadline, timeline, alive, pin):
        return Readiness.SSH, why
    return None, why
