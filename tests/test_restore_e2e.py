"""Restore instead of boot: real VMs restored from a real snapshot of the demo image, checked over SSH.

The identity tests: two VMs restored from one snapshot are two VMs (host name, address, MAC, host
key, boot id, their RNG's output), with the host's clock, each on its own work disk. A snapshot
whose inputs changed is not used; a corrupt one falls back to a cold boot.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from .support.cli import (
    REPO,
    assert_verified,
    command,
    reconcile,
    ssh,
    ssh_command,
    vm_record,
    vm_spec,
    vms,
    warmvm,
    write,
)
from .support.netns import qemu_pids_under
from .support.waits import wait_for

pytestmark = pytest.mark.e2e

GETRANDOM_C = r"""
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
int main(void) {
    unsigned char b[64];
    struct timespec now;
    if (getrandom(b, sizeof b, 0) != sizeof b || clock_gettime(CLOCK_REALTIME, &now)) return 1;
    for (int i = 0; i < 64; i++) printf("%02x", b[i]);
    printf("\n%lld.%09ld\n", (long long)now.tv_sec, now.tv_nsec);
    return 0;
}
"""


@pytest.fixture(scope="module")
def getrandom_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static program that prints 64 bytes of getrandom() and the wall clock to the ns: the guest has
no such tool of its own (busybox's date has no %N)."""
    out = tmp_path_factory.mktemp("getrandom") / "getrandom"
    source = out.with_suffix(".c")
    source.write_text(GETRANDOM_C)
    subprocess.run(["gcc", "-static", "-Os", "-o", str(out), str(source)], check=True)
    return out


def snapshots(state: Path) -> list[Path]:
    return sorted((state / "snapshots").glob("*/*.bin")) if (state / "snapshots").is_dir() else []


def restore_spec(name: str, **spec: str) -> str:
    return vm_spec(name, boot="restore", diskSize="64Mi", **spec)


@pytest.fixture
def snapshotted(demo_host: tuple[Path, Path]) -> Iterator[tuple[Path, Path]]:
    """A state whose demo image has its snapshot: a VM that asks for one before it is made boots cold
    (and says so) while the snapshot is made."""
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-first", diskSize="64Mi"))
    reconcile(specs, state)  # the pool and the seed are warm
    write(specs / "vms.yaml", vm_spec("vm-first", diskSize="64Mi") + "---\n" + restore_spec("vm-early"))
    result = reconcile(specs, state)
    assert "boot=cold cold_because=its snapshot is not ready yet" in result.stderr, result.stderr
    assert vm_record(state, "vm-early")["boot"] == "cold"
    assert "snapshot_generate" in result.stderr and len(snapshots(state)) == 1
    yield specs, state


def keep_earlier(*docs: str) -> str:
    """The fixture's VMs stay: removing most VMs at once would be held back as a likely accident."""
    return "---\n".join([vm_spec("vm-first", diskSize="64Mi"), restore_spec("vm-early"), *docs])


def test_two_restored_vms_are_two_vms(snapshotted: tuple[Path, Path], getrandom_tool: Path) -> None:
    specs, state = snapshotted
    write(specs / "vms.yaml", keep_earlier(restore_spec("vm-a"), restore_spec("vm-b")))
    result = reconcile(specs, state)
    assert result.stderr.count("boot=restore") == 2, result.stderr
    seen = {}
    rows = vms(specs, state)
    for vm in ("vm-a", "vm-b"):
        assert vm_record(state, vm)["boot"] == "restore" and rows[vm]["boot"] == "restore"
        ssh(state, vm, f"echo {vm} > /root/mine; sync")
        tool = subprocess.run([*ssh_command(state, vm), "cat > /tmp/getrandom && chmod +x /tmp/getrandom"],
                              input=getrandom_tool.read_bytes(), capture_output=True, timeout=60, cwd=REPO)
        assert tool.returncode == 0, tool.stderr
        before = time.time()
        out = ssh(state, vm, "hostname; ip -o -4 addr show eth0; cat /sys/class/net/eth0/address; "
                             "cat /proc/sys/kernel/random/boot_id; head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n';"
                             " echo; /tmp/getrandom; ls /root; cat /root/mine").splitlines()
        after = time.time()
        hostname, addr, mac, boot_id, urandom, getrandom, clock, *rest = out
        assert hostname == vm
        assert abs(float(clock) - (before + after) / 2) < 1.0 + (after - before) / 2, "the guest has the host's time"
        assert rest[-1] == vm and "README" in rest[:-1], "its own work disk, with its own files"
        seen[vm] = (addr.split()[3], mac, boot_id, urandom, getrandom,
                    (state / "vms" / vm / "known_hosts").read_text().split()[2])
    a, b = seen["vm-a"], seen["vm-b"]
    for what, x, y in zip(("address", "MAC", "boot id", "urandom", "getrandom", "host key"), a, b, strict=True):
        assert x != y, f"two VMs restored from one snapshot share their {what}"
    assert a[1] == vm_record(state, "vm-a")["mac"], "the MAC warmvm gave it, not the template's"
    assert_verified(specs, state)


def test_a_snapshot_whose_inputs_changed_is_not_used(snapshotted: tuple[Path, Path], demo_image: Path) -> None:
    specs, state = snapshotted
    old = snapshots(state)
    initrd = demo_image / "initrd.img"
    os.utime(initrd)  # a new initrd, as far as any fingerprint can tell
    write(specs / "vms.yaml", keep_earlier(restore_spec("vm-a")))
    result = reconcile(specs, state)
    assert vm_record(state, "vm-a")["boot"] == "cold", result.stderr
    assert "snapshot_generate" in result.stderr and "snapshot_delete" in result.stderr
    assert snapshots(state) and snapshots(state) != old, "made again from the new inputs; the old one freed"
    assert vms(specs, state)["vm-a"]["phase"] == "Running"
    write(specs / "vms.yaml", vm_spec("vm-first", diskSize="64Mi"))  # no VM asks to be restored any more
    done = warmvm(specs, state, "reconcile", "--confirm-removals", timeout=300)
    assert done.returncode == 0 and snapshots(state) == [], "nothing uses it: freed"
    assert not (state / "snapshots" / "demo").exists()


def doctor_snapshot(specs: Path, state: Path) -> list[dict[str, str]]:
    result = warmvm(specs, state, "doctor", "--deep", "-o", "json")
    return [c for c in json.loads(result.stdout) if c["name"].startswith("image/demo/snapshot/")]


def test_a_corrupt_snapshot_falls_back_to_a_cold_boot(snapshotted: tuple[Path, Path]) -> None:
    specs, state = snapshotted
    (snapshot,) = snapshots(state)
    images = json.loads(warmvm(specs, state, "get", "images", "-o", "json").stdout)
    assert images[0]["snapshots"].startswith("256Mi/1cpu/auto ready"), images
    assert [c["status"] for c in doctor_snapshot(specs, state)] == ["ok", "ok"]
    with open(snapshot, "r+b") as f:  # a flipped byte in the middle: QEMU would load it without a word
        f.seek(snapshot.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert [c["status"] for c in doctor_snapshot(specs, state)] == ["ok", "fail"], "doctor --deep finds it"
    write(specs / "vms.yaml", keep_earlier(restore_spec("vm-a")))
    result = reconcile(specs, state)
    assert "corrupt" in result.stderr and vm_record(state, "vm-a")["boot"] == "cold", result.stderr
    row = vms(specs, state)["vm-a"]
    assert row["phase"] == "Running" and row["boot"] == "cold (asks restore)"
    ssh(state, "vm-a", "true")
    assert_verified(specs, state)


def test_kill_9_during_a_restore_never_leaves_a_stuck_or_doubled_qemu(snapshotted: tuple[Path, Path]) -> None:
    """The controller dies at a random moment of a restore (before or after QEMU loaded its state): the
    next reconcile ends with one QEMU for the VM, running as that VM."""
    specs, state = snapshotted
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for round_ in range(3):
        vm = f"vm-k{round_}"
        write(specs / "vms.yaml", keep_earlier(restore_spec(vm)))
        proc = subprocess.Popen(command(specs, state, "reconcile"), cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(partial(qemu_pids_under, state / "vms" / vm), timeout=60, interval=0.001)
            # deliberate: a random kill moment, with QEMU starting up, its state loading, or its guest running
            time.sleep(rng.uniform(0, 0.3))
        finally:
            proc.kill()
            proc.wait()
        result = reconcile(specs, state)
        assert "not ready within" not in result.stderr, "a QEMU left waiting for its state is not waited for"
        assert len(qemu_pids_under(state / "vms" / vm)) == 1
        assert ssh(state, vm, "hostname") == f"{vm}\n"
    assert_verified(specs, state)
