"""`spec.suspended`: a running VM's memory saved to its own file and its QEMU gone, then resumed from
it with its own disk, address and host key; a run killed at any point of either loses nothing
(issue 22). Real VMs under QEMU in a private namespace."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from .support.cli import (
    REPO,
    assert_verified,
    command,
    reconcile,
    ssh,
    vm_record,
    vm_spec,
    vms,
    warmvm,
    write,
)
from .support.waits import wait_for

pytestmark = pytest.mark.e2e

# a process whose memory is its state: a counter in a shell variable, shown through a tmpfs file
COUNTER = ("setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; usleep 100000; done' "
           ">/dev/null 2>&1 </dev/null & sleep 0.5; pidof sh | wc -w; cat /tmp/count")


def _spec(specs: Path, suspended: bool) -> None:
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi", suspended=str(suspended).lower()))


def _count(state: Path) -> int:
    return int(ssh(state, "vm-a", "cat /tmp/count").strip())


def _start(specs: Path, state: Path) -> int:
    _spec(specs, False)
    reconcile(specs, state)
    ssh(state, "vm-a", "echo written-before > /root/kept; sync")
    ssh(state, "vm-a", COUNTER)
    return _count(state)


def _suspended(specs: Path, state: Path) -> None:
    row = vms(specs, state)["vm-a"]
    assert row["phase"] == "Suspended" and "saved state" in row["reason"], row
    assert vm_record(state, "vm-a").get("pid") is None
    assert (state / "vms" / "vm-a" / "suspend.state").stat().st_size > 1 << 20
    assert row["tap"] != "-", "its TAP is kept"


def _resumed(specs: Path, state: Path, ip: str, before: int) -> None:
    row = vms(specs, state)["vm-a"]
    assert row["phase"] == "Running" and row["ip"] == ip
    assert ssh(state, "vm-a", "cat /root/kept") == "written-before\n", "the disk is its own"
    after = _count(state)
    assert after >= before, "the counter went on from its memory, not from 0"
    time.sleep(0.5)
    assert _count(state) > after, "the process that counts still runs"
    assert not (state / "vms" / "vm-a" / "suspend.state").exists(), "no state file while a QEMU runs from it"
    assert_verified(specs, state)


def test_suspend_and_resume_keep_memory_disk_address_and_host_key(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    before = _start(specs, state)
    ip = vms(specs, state)["vm-a"]["ip"]
    _spec(specs, True)
    reconcile(specs, state)
    _suspended(specs, state)
    time.sleep(3)  # its clock would lag by this much
    _spec(specs, False)
    reconcile(specs, state)
    _resumed(specs, state, ip, before)  # ssh checks the pinned host key: the same key answered
    guest_now = int(ssh(state, "vm-a", "date -u +%s"))
    assert abs(guest_now - time.time()) < 2, "its clock was set to the host's once resumed"


def _kill_reconcile_when(specs: Path, state: Path, moment: str, reached: object) -> None:
    run = subprocess.Popen(command(specs, state, "reconcile"), cwd=REPO, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(reached, 60, interval=0.005, what=moment)  # type: ignore[arg-type]
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()


@pytest.mark.parametrize("moment", ["suspending", "resuming"])
def test_kill_9_during_suspend_or_resume_loses_nothing(demo_host: tuple[Path, Path], moment: str) -> None:
    specs, state = demo_host
    before = _start(specs, state)
    ip = vms(specs, state)["vm-a"]["ip"]
    _spec(specs, True)
    if moment == "suspending":
        _kill_reconcile_when(specs, state, moment, lambda: vm_record(state, "vm-a").get("suspending"))
    reconcile(specs, state)
    _suspended(specs, state)
    _spec(specs, False)
    if moment == "resuming":
        _kill_reconcile_when(specs, state, moment, lambda: vm_record(state, "vm-a").get("boot") == "resume"
                             and vm_record(state, "vm-a").get("pid"))
    reconcile(specs, state)
    _resumed(specs, state, ip, before)


def test_a_saved_state_that_fails_its_digest_is_put_aside_and_the_vm_boots_cold(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    _start(specs, state)
    _spec(specs, True)
    reconcile(specs, state)
    saved = state / "vms" / "vm-a" / "suspend.state"
    with open(saved, "r+b") as f:  # one byte of the saved memory changed
        f.seek(saved.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    _spec(specs, False)
    result = warmvm(specs, state, "reconcile")
    assert "does not match its digest" in result.stderr
    wait_for(lambda: vms(specs, state)["vm-a"]["phase"] == "Running", 120, what="booted cold")
    assert ssh(state, "vm-a", "cat /root/kept") == "written-before\n", "the disk is as the suspend left it"
    assert ssh(state, "vm-a", "cat /tmp/count 2>/dev/null || echo none") == "none\n", "a cold boot: no old memory"
    assert list((state / "vms" / "vm-a").glob("suspend.state.refused-*")), "the state is kept aside"
