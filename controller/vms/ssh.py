"""SSH to the guests: the readiness probe and `warmvm ssh`.

A VM is Running when an SSH command succeeds. The probe must not feed on the
guest it waits for (eight TCG guests on two cores once drowned in restarted
handshakes): it watches the console for the guest's own "warmvm: ready" line
and polls the TCP port (a SYN costs the guest nothing), and only then spends
one patient ssh login, not a storm of short ones.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           "-o", "BatchMode=yes"]
READY = b"warmvm: ready"
PATIENT = 20  # seconds one readiness login may take on a loaded host
RETRY = 0.5  # between two logins that failed


def ssh_argv(key: Path, ip: str, command: list[str], connect_timeout: int = 5) -> list[str]:
    return ["ssh", "-i", str(key), *OPTIONS, "-o", f"ConnectTimeout={connect_timeout}", f"root@{ip}", *command]


def port_open(ip: str, port: int = 22, timeout: float = 0.05) -> bool:
    """A closed port answers at once; a guest not yet up answers nothing (no ARP reply), so the
    timeout bounds how late readiness is seen."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(key: Path, ip: str, deadline: float, console: Path, alive: Callable[[], bool]) -> bool:
    """Polls until `ssh true` succeeds (True), the deadline passes or the VM dies (False)."""
    while time.monotonic() < deadline:
        if not alive():
            return False
        if said_ready(console) or port_open(ip):
            remaining = max(1, int(deadline - time.monotonic()))
            try:
                done = subprocess.run(ssh_argv(key, ip, ["true"], min(PATIENT, remaining)), capture_output=True,
                                      stdin=subprocess.DEVNULL, timeout=PATIENT + 10, check=False)
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 0:
                return True
            time.sleep(RETRY)
            continue
        time.sleep(0.01)
    return False


def said_ready(console: Path) -> bool:
    """The guest's init printed its ready line (the console is emptied at every start). A guest can
    lie here: it only decides when the login is tried, not that the VM is ready."""
    try:
        with open(console, "rb") as f:
            return READY in f.read(1 << 20)
    except OSError:
        return False
