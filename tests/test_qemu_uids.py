"""Each VM's QEMU runs as a uid of its own, recorded with the VM, never 0: a guest that escapes into
its QEMU cannot signal another VM's (issue 21, item 6)."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from controller.base import uids

from .support.cli import instance, qemu_pid, reconcile, vm_record, vm_spec, write

pytestmark = pytest.mark.e2e


def _uids(pid: int) -> tuple[int, int]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["Uid"].split()[1]), int(status["Gid"].split()[1])  # effective


def _signal_as(uid: int, pid: int) -> int:
    """kill(pid, 0) from a child process that runs as `uid` (what an escaped QEMU could try): its errno."""
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(pid, 0)
            os._exit(0)
        except OSError as e:
            os._exit(e.errno or 1)
        finally:
            os._exit(99)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def test_each_vms_qemu_runs_as_its_own_recorded_uid_and_cannot_signal_another(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi") + "---\n" + vm_spec("vm-b", diskSize="64Mi"))
    reconcile(specs, state)
    block = uids.block(instance(state))
    pids = {vm: qemu_pid(state, vm) for vm in ("vm-a", "vm-b")}
    running = {vm: _uids(pid) for vm, pid in pids.items()}
    for vm, (uid, gid) in running.items():
        assert uid == gid == vm_record(state, vm)["uid"], "it runs as the uid its record holds"
        assert uid != 0 and uid in block
    assert running["vm-a"] != running["vm-b"]
    a_uid = running["vm-a"][0]
    assert _signal_as(a_uid, pids["vm-b"]) == errno.EPERM, "vm-a's uid cannot signal vm-b's QEMU"
    assert _signal_as(a_uid, pids["vm-a"]) == 0, "(the check itself works: it can signal its own)"
    os.kill(pids["vm-b"], signal.SIGKILL)  # a restart keeps the VM's uid
    reconcile(specs, state)
    assert _uids(qemu_pid(state, "vm-b"))[0] == running["vm-b"][0]
