"""SSH to the guests: the readiness probe and `warmvm ssh`.

A VM is Running when an SSH command succeeds. The probe first polls the TCP
port (cheap, every 10-60 ms) and only then spends an ssh process on a real
login, so readiness is seen within a few tens of milliseconds.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           "-o", "BatchMode=yes", "-o", "ConnectTimeout=2"]


def ssh_argv(key: Path, ip: str, command: list[str]) -> list[str]:
    return ["ssh", "-i", str(key), *OPTIONS, f"root@{ip}", *command]


def port_open(ip: str, port: int = 22, timeout: float = 0.05) -> bool:
    """A closed port answers at once; a guest not yet up answers nothing (no ARP reply), so the
    timeout bounds how late readiness is seen."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(key: Path, ip: str, deadline: float, alive: Callable[[], bool]) -> bool:
    """Polls until `ssh true` succeeds (True), the deadline passes or the VM dies (False)."""
    while time.monotonic() < deadline:
        if not alive():
            return False
        if port_open(ip):
            done = subprocess.run(ssh_argv(key, ip, ["true"]), capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=10, check=False)
            if done.returncode == 0:
                return True
        time.sleep(0.01)
    return False
