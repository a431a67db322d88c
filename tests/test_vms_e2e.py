"""Real VMs: the demo image booted under QEMU in a private namespace, checked over SSH.

The suite builds the demo image itself (hack/build-image.sh, cached in
state/demo-image). Each boot takes a few seconds under TCG; the tests keep
to two VMs at a time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.adapters.qemu import running_pid
from controller.statedir.layout import VmFiles

from .support.cli import (
    REPO,
    assert_verified,
    command,
    network_spec,
    qemu_pid,
    reconcile,
    records,
    ssh,
    vm_spec,
    vms,
    warmvm,
    write,
)
from .support.images import demo_image_spec
from .support.netns import qemu_pids_under
from .support.waits import wait_for

pytestmark = pytest.mark.e2e


def test_two_vms_boot_serve_their_work_disk_and_go_away_cleanly(demo_host: tuple[Path, Path], demo_image: Path) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="128Mi") + "---\n" + vm_spec("vm-b", diskSize="192Mi"))
    reconcile(specs, state)
    rows = vms(specs, state)
    assert rows["vm-a"]["phase"] == rows["vm-b"]["phase"] == "Running"
    assert rows["vm-a"]["ip"] != rows["vm-b"]["ip"]
    readme = (demo_image / "root" / "README").read_text()
    for vm, size_mib in (("vm-a", 128), ("vm-b", 192)):
        out = ssh(state, vm, "hostname; cat /root/README; cat /sys/block/$(basename $(awk '$2==\"/root\"{print $1}' /proc/mounts))/size")
        hostname, *rest = out.splitlines()
        assert hostname == vm
        assert "\n".join(rest[:-1]) + "\n" == readme
        assert int(rest[-1]) * 512 == size_mib << 20, "the VM sees a work disk of its diskSize"
    # vm-b goes, and the pool grows so its TAP fits back in
    b_tap = rows["vm-b"]["tap"]
    b_files, b_pid = VmFiles(state / "vms" / "vm-b"), qemu_pid(state, "vm-b")
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="128Mi"))
    write(specs / "net.yaml", network_spec(size=2))
    reconcile(specs, state)
    assert running_pid(b_files, b_pid) is None and not (state / "vms" / "vm-b").exists()
    pool = json.loads(warmvm(specs, state, "get", "pool", "-o", "json").stdout)
    assert {"tap": b_tap, "holder": "(idle)"}.items() <= next(p for p in pool if p["tap"] == b_tap).items()
    assert_verified(specs, state)


def test_kill_9_right_after_spawn_never_leaves_an_untracked_qemu(demo_host: tuple[Path, Path]) -> None:
    """The controller dies a few ms after spawning QEMU, before or after recording it, at random: the
    QEMU is still found (through the pid file it writes), never doubled, and stopped when asked."""
    specs, state = demo_host
    write(specs / "vm.yaml", vm_spec("vm-a", running="false"))
    reconcile(specs, state)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for _ in range(6):
        write(specs / "vm.yaml", vm_spec("vm-a"))
        proc = subprocess.Popen(command(specs, state, "reconcile"), cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: qemu_pids_under(state), timeout=30, interval=0.0005)
            time.sleep(rng.uniform(0, 0.003))  # deliberate: a random kill moment around the one the spawn is recorded
        finally:
            proc.kill()
            proc.wait()
        assert len(qemu_pids_under(state)) == 1
        rows = json.loads(warmvm(specs, state, "get", "vms", "-o", "json").stdout)
        assert rows[0]["phase"] in ("Booting", "Running"), rows  # tracked, not lost
        assert warmvm(specs, state, "plan").stdout.count("vm_start") == 0, "a second QEMU would be started"
        write(specs / "vm.yaml", vm_spec("vm-a", running="false"))
        reconcile(specs, state)
        assert qemu_pids_under(state) == []
    assert_verified(specs, state)


def test_killed_qemu_is_started_again(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi"))
    reconcile(specs, state)
    ssh(state, "vm-a", "echo kept > /root/marker; sync")
    pid = running_pid(VmFiles(state / "vms" / "vm-a"), qemu_pid(state, "vm-a"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert "vm_start" in reconcile(specs, state).stderr
    assert ssh(state, "vm-a", "cat /root/marker") == "kept\n", "the disk survives a restart"
    row = vms(specs, state)["vm-a"]
    assert row["phase"] == "Running" and row["restarts"] == 1
    assert_verified(specs, state)


def test_running_false_provisions_without_booting(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-c", diskSize="64Mi", running="false"))
    out = reconcile(specs, state).stderr
    assert "vm_start" not in out and "disk_" in out and "ip_assign" in out and "tap_claim" in out
    row = vms(specs, state)["vm-c"]
    assert row["phase"] == "Stopped" and row["tap"] != "-" and row["ip"] != "-"
    write(specs / "vms.yaml", vm_spec("vm-c", diskSize="64Mi"))
    reconcile(specs, state)
    assert vms(specs, state)["vm-c"]["phase"] == "Running"
    assert ssh(state, "vm-c", "echo ok") == "ok\n"
    assert_verified(specs, state)


def test_a_vm_that_cannot_boot_is_failed_and_the_others_keep_running(demo_host: tuple[Path, Path], tmp_path: Path,
                                                                     demo_image: Path) -> None:
    specs, state = demo_host
    # a broken image: the demo's kernel file with its payload cut off (it still has a bzImage header)
    broken = tmp_path / "broken"
    broken.mkdir()
    kernel = (demo_image / "vmlinuz").read_bytes()
    (broken / "vmlinuz").write_bytes(kernel[: len(kernel) // 8])
    write(specs / "broken.yaml", demo_image_spec(demo_image, name="broken", default=False, kernel=broken / "vmlinuz"))
    write(specs / "vms.yaml", vm_spec("good", diskSize="64Mi") + "---\n" + vm_spec("bad", image="broken", diskSize="64Mi"))
    result = warmvm(specs, state, "--boot-timeout", "20", "reconcile", timeout=400)
    assert result.returncode == 1 and "boot failed 3 times, giving up" in result.stderr
    rows = vms(specs, state)
    assert rows["good"]["phase"] == "Running" and ssh(state, "good", "echo up") == "up\n"
    assert rows["bad"]["phase"] == "Failed" and rows["bad"]["reason"]
    again = warmvm(specs, state, "reconcile")  # not retried until its spec changes, still reported
    assert again.returncode == 1 and "vm_start" not in again.stderr and "Failed" in again.stderr
    audit = json.loads(warmvm(specs, state, "verify", "-o", "json").stdout)
    assert audit["clean"], audit["leaks"]  # a Failed VM is not converged, and still leaks nothing


def test_a_boot_records_its_timeline_stage_by_stage_in_order(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vm.yaml", vm_spec("vm-t", diskSize="64Mi"))
    result = reconcile(specs, state, "--log-format", "json")
    (awaited,) = [r for r in records(result.stderr) if r.get("stage") == "vm_await"]
    timeline = awaited["timeline"]
    # found ready over the channel: its answer may come before the console's ready line ("sshd") is read
    stages = ["kernel", "initramfs", "root_mounted", "init", "network", "sshd", "channel"]
    assert [s for s in stages if s != "sshd"] == [s for s in timeline if s != "sshd"], timeline
    assert list(timeline) == [s for s in stages if s in timeline], timeline
    seen = list(timeline)
    assert all(0 < timeline[a] <= timeline[b] for a, b in zip(seen, seen[1:], strict=False)), timeline
    assert timeline["channel"] <= awaited["boot_ms"] + 50
    assert_verified(specs, state)


def test_the_short_boot_path_changes_nothing_the_guest_sees(demo_host: tuple[Path, Path], demo_image: Path) -> None:
    """The same kernel booted as a bzImage and directly at its PVH entry (the uncompressed vmlinux the
    image build extracts): same kernel release, file systems, work disk, network, services."""
    specs, state = demo_host
    write(specs / "pvh.yaml", demo_image_spec(demo_image, name="pvh", default=False, kernel=demo_image / "vmlinux"))
    write(specs / "vms.yaml", vm_spec("via-bz", diskSize="64Mi") + "---\n" + vm_spec("via-pvh", image="pvh",
                                                                                        diskSize="64Mi"))
    reconcile(specs, state)
    # mount points, types and options but tmpfs sizes (the kernel sizes them from its RAM, which differs by
    # the ~0.5 MB the bzImage's decompressor kept reserved)
    probe = ("uname -r; uname -m; cat /proc/sys/kernel/osrelease; "
             "awk '{gsub(/,?(size|nr_inodes)=[0-9k]+/, \"\", $4); print $2, $3, $4}' /proc/mounts | sort; "
             "hostname; ip -o -4 addr show | awk '{print $2, $3}'; ip route | sed 's/ *$//'; "
             "ls /root; cat /root/README; "
                 # services (the one ARP request init sends the gateway may still wait for its answer: not one)
                 "ps -o vsz,comm | awk '$1 != 0 && NR > 1 && $2 != \"arping\" {print $2}' | sort -u")
    seen = {vm: ssh(state, vm, probe) for vm in ("via-bz", "via-pvh")}
    rows = vms(specs, state)
    normal = {vm: text.replace(vm, "VM").replace(rows[vm]["ip"], "IP") for vm, text in seen.items()}
    assert normal["via-bz"] == normal["via-pvh"], seen
    assert "/root ext4" in normal["via-pvh"] and "dropbear" in normal["via-pvh"]
    assert_verified(specs, state)
