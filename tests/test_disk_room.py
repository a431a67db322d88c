"""Work disks against the state's file system (--disk-overcommit): the real CLI, a real small file system.

The state directory is on a 64 MiB tmpfs (conftest's small_fs, unmounted after the test, pass or fail),
the image is the fake one (VMs with `running: false` are provisioned, never booted), and the test's own
network namespace is the host.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.base.units import human
from controller.cli.main import parser

from .support.cli import assert_verified, vm_spec, vms, warmvm, write
from .support.daemon import Daemon
from .support.images import fake_host
from .support.waits import wait_for

MiB = 1 << 20


@pytest.fixture
def small_host(netns: str, tmp_path: Path, small_fs: Callable[[str], Path]) -> tuple[Path, Path]:
    """Specs with vm-huge (1Gi: far beyond the file system) before vm-small (32Mi) by name; the state on 64 MiB."""
    specs, _ = fake_host(tmp_path, pool_size=0)
    write(specs / "vms.yaml", vm_spec("vm-huge", running="false", diskSize="1Gi") + "---\n"
          + vm_spec("vm-small", running="false", diskSize="32Mi"))
    return specs, small_fs("64m")


def doctor(specs: Path, state: Path, *options: str) -> dict[str, str]:
    result = warmvm(specs, state, *options, "doctor", "-o", "json")
    assert "Traceback" not in result.stderr, result.stderr
    return {c["name"]: c for c in json.loads(result.stdout)}["state/disks"]


def test_a_disk_the_state_file_system_cannot_hold_is_refused_in_one_line_and_the_others_provision(
        small_host: tuple[Path, Path]) -> None:
    specs, state = small_host
    assert doctor(specs, state)["status"] == "fail", "doctor says it before anything is made"
    result = warmvm(specs, state, "reconcile")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    refused = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert len(refused) == 1, result.stderr
    assert refused[0].startswith("problem: vm/vm-huge: diskSize 1Gi does not fit the state file system under "
                                 "--disk-overcommit 1: ") and "Mi over (work disks may add up to " in refused[0]
    assert "disk_" not in "".join(line for line in result.stderr.splitlines() if "vm/vm-huge" in line)
    assert not (state / "vms" / "vm-huge" / "disk.img").exists()
    assert (state / "vms" / "vm-small" / "disk.img").exists(), "the VM after it by name is provisioned"
    rows = vms(specs, state)
    assert rows["vm-huge"]["phase"] == "Pending" and "does not fit" in rows["vm-huge"]["reason"]
    assert rows["vm-huge"]["diskVirtual"] == "-" and rows["vm-huge"]["diskUsed"] == "-"
    assert rows["vm-small"]["phase"] == "Stopped" and rows["vm-small"]["diskVirtual"] == "32Mi"
    used = (state / "vms" / "vm-small" / "disk.img").stat().st_blocks * 512
    assert 0 < used < 32 * MiB and rows["vm-small"]["diskUsed"] == human(used)
    table = warmvm(specs, state, "get", "vms").stdout.splitlines()
    assert table[0].split()[8:10] == ["DISKUSED", "DISKVIRTUAL"], table[0]


def test_an_overcommit_ratio_admits_it_and_doctor_warns_that_guests_could_fill_the_file_system(
        small_host: tuple[Path, Path]) -> None:
    specs, state = small_host
    assert warmvm(specs, state, "reconcile").returncode == 1
    result = warmvm(specs, state, "--disk-overcommit", "100", "reconcile")
    assert result.returncode == 0, result.stderr
    assert (state / "vms" / "vm-huge" / "disk.img").exists()
    assert vms(specs, state)["vm-huge"]["diskVirtual"] == "1Gi"
    warned = doctor(specs, state, "--disk-overcommit", "100")
    assert warned["status"] == "warn" and "would fill the file system" in warned["finding"], warned
    assert doctor(specs, state)["status"] == "fail", "under 1.0 the disks made stay, and doctor says so"
    assert_verified(specs, state)  # an existing disk is never refused: the plain reconcile converges


def test_a_bad_ratio_is_one_line_and_exit_2(small_host: tuple[Path, Path]) -> None:
    specs, state = small_host
    for bad in ("0", "-1", "lots", "inf"):
        result = warmvm(specs, state, "--disk-overcommit", bad, "plan")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1].startswith("warmvm: error: argument --disk-overcommit: "), result.stderr
    assert not state.exists()


def test_every_command_that_plans_takes_the_ratio_the_agent_too() -> None:
    for command in (["plan"], ["reconcile"], ["watch"], ["doctor"], ["get", "vms"], ["agent", "--host", "h"]):
        assert parser().parse_args([*command, "--disk-overcommit", "2.5"]).disk_overcommit == 2.5
        assert parser().parse_args(["--disk-overcommit", "3", *command]).disk_overcommit == 3
    assert parser().parse_args(["plan"]).disk_overcommit == 1


def test_the_daemon_says_the_state_file_systems_free_space(small_host: tuple[Path, Path]) -> None:
    specs, state = small_host
    d = Daemon(specs, state, "--interval", "3600")
    try:
        wait_for(lambda: d.finished() >= 1, timeout=60)
        fs = os.statvfs(state)
        assert d.metric("warmvm_state_fs_size_bytes") == fs.f_blocks * fs.f_frsize == 64 * MiB
        assert abs(d.metric("warmvm_state_fs_free_bytes") - fs.f_bavail * fs.f_frsize) <= MiB
        assert d.metric("warmvm_work_disks_virtual_bytes") == 32 * MiB  # vm-small's; vm-huge's is refused
        assert 0 < d.metric("warmvm_work_disks_used_bytes") < 32 * MiB
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
