"""`warmvm doctor` and `warmvm verify` against a real host: a private namespace, real tools, real files.

The image's kernel is a stand-in (these VMs are provisioned, never booted);
the stray QEMU is a real one, paused before it runs anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.disks.observe import kernel_format
from controller.network.marks import vm_mark

from .support.cli import REPO, command, instance, records, vm_spec, warmvm, write
from .support.images import fake_host, make_kernel
from .support.waits import wait_for


@pytest.fixture
def host(netns: str, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "README").write_text("hello\n")
    specs, state = fake_host(tmp_path, pool_size=2, seed=f"{{from: '{root}'}}")
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    return specs, state


def run(specs: Path, state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command(specs, state, *args), capture_output=True, text=True, cwd=REPO,
                            stdin=subprocess.DEVNULL, env=env, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def checks(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in json.loads(result.stdout)}


def audit(specs: Path, state: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(run(specs, state, "verify", "-o", "json").stdout)


def leaks(specs: Path, state: Path) -> set[tuple[str, str]]:
    return {(f["kind"], f["name"]) for f in audit(specs, state)["leaks"]}


def test_doctor_on_a_healthy_private_host_passes_and_says_so_in_a_table(host: tuple[Path, Path]) -> None:
    specs, state = host
    assert warmvm(specs, state, "reconcile").returncode == 0
    result = run(specs, state, "doctor")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0].split() == ["CHECK", "STATUS", "FINDING"]
    found = checks(run(specs, state, "doctor", "-o", "json"))
    assert found["image/demo/seed"]["status"] == "ok" and found["vm/vm-a/disk"]["status"] == "ok"
    assert found["image/demo/kernel"]["finding"].endswith(": a bzImage")
    assert found["tool/qemu-img"]["status"] == "ok" and "version" in found["tool/qemu-img"]["finding"]
    assert found["accel/kvm"]["status"] in ("ok", "warn")
    deep = checks(run(specs, state, "doctor", "--deep", "-o", "json"))
    assert deep["image/demo/seed-fsck"]["status"] == "ok"


def test_a_kernel_is_named_by_its_format_a_pvh_vmlinux_included(demo_image: Path, tmp_path: Path) -> None:
    """The demo image boots its PVH vmlinux, an ELF: doctor once called it a bzImage."""
    make_kernel(tmp_path / "bzImage")
    (tmp_path / "junk").write_bytes(b"\x7fELF" + bytes(4096))
    assert kernel_format(tmp_path / "bzImage") == "bzImage"
    assert kernel_format(demo_image / "vmlinux") == "PVH ELF"
    assert kernel_format(tmp_path / "junk") is None and kernel_format(tmp_path / "absent") is None


def test_doctor_names_the_package_of_a_missing_tool_and_fails(host: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = host
    bin_dir = tmp_path / "bin"  # every tool but QEMU
    bin_dir.mkdir()
    for tool in ("qemu-img", "mkfs.ext4", "debugfs", "resize2fs", "e2fsck", "ssh", "ssh-keygen", "ip"):
        if (found := shutil.which(tool)) is not None:
            (bin_dir / tool).symlink_to(found)
    result = run(specs, state, "doctor", "-o", "json", env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 1
    qemu = checks(result)["tool/qemu-system-x86_64"]
    assert qemu["status"] == "fail" and "qemu-system-x86" in qemu["fix"]


def test_doctor_warns_of_foreign_devices_with_the_pool_prefix_and_a_stale_seed(
        host: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = host
    assert warmvm(specs, state, "reconcile").returncode == 0
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", "tap-pool-77"], check=True)
    (tmp_path / "root" / "README").write_text("a new release\n")  # the seed's inputs changed
    found = checks(run(specs, state, "doctor", "-o", "json"))
    assert found["network/default/prefix"]["status"] == "warn" and "tap-pool-77" in found["network/default/prefix"][
        "finding"]
    assert found["image/demo/seed"]["status"] == "warn" and "stale" in found["image/demo/seed"]["finding"]



def test_doctor_fails_a_state_directory_too_full_for_the_specs(host: tuple[Path, Path], tmp_path: Path,
                                                               small_fs: Callable[[str], Path]) -> None:
    specs, _ = host
    small_state = small_fs("8m")
    (tmp_path / "root" / "big").write_bytes(os.urandom(6 << 20))
    small_state.mkdir(mode=0o700)
    result = run(specs, small_state, "doctor", "-o", "json")
    assert result.returncode == 1
    assert checks(result)["state/space"]["status"] == "fail"


def test_doctor_fails_a_state_directory_others_can_write(host: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = host
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    found = checks(run(specs, state, "doctor", "-o", "json"))
    assert found["state/dir"]["status"] == "fail" and "writable by group and others" in found["state/dir"]["finding"]


def test_verify_is_clean_after_convergence_and_counts_idle_taps_as_capacity(host: tuple[Path, Path]) -> None:
    specs, state = host
    assert warmvm(specs, state, "reconcile").returncode == 0
    report = audit(specs, state)
    assert report["clean"] and report["leaks"] == [], report
    assert report["capacity"] == [{"network": "default", "idle": 2, "size": 2}]
    assert run(specs, state, "verify").returncode == 0


def test_verify_names_each_leak_made_by_hand_and_never_calls_foreign_devices_ours(
        host: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = host
    assert warmvm(specs, state, "reconcile").returncode == 0
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", "tap-ghost0"], check=True)
    subprocess.run(["ip", "link", "set", "tap-ghost0", "alias", str(vm_mark(instance(state), "default", "ghost"))],
                   check=True)
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", "tap-pool-99"], check=True)  # foreign
    (state / "vms" / "orphan").mkdir()
    shutil.copy(state / "vms" / "vm-a" / "disk.json", state / "vms" / "orphan" / "disk.json")
    shutil.copy(state / "vms" / "vm-a" / "disk.img", state / "vms" / "orphan" / "disk.img")
    (state / "tmp" / "leftover.part").write_bytes(b"half")
    (state / "vms" / "stray").mkdir()
    qemu = subprocess.Popen(["qemu-system-x86_64", "-M", "none", "-S", "-display", "none", "-nodefaults",
                             "-pidfile", str(state / "vms" / "stray" / "qemu.pid")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (state / "vms" / "stray" / "qemu.pid").exists(), timeout=5, interval=0.05)
        result = run(specs, state, "verify", "-o", "json")
        report = json.loads(result.stdout)
    finally:
        qemu.kill()
        qemu.wait()
    assert result.returncode == 1 and not report["clean"]
    found = {(f["kind"], f["name"]) for f in report["leaks"]}
    assert {("tap", "tap-ghost0"), ("disk", "orphan"), ("tmp", "leftover.part"), ("qemu", str(qemu.pid))} <= found
    assert not any(name.startswith("tap-pool-") for _, name in found), "idle pool TAPs are capacity, not leaks"
    assert ("device", "tap-pool-99") in {(f["kind"], f["name"]) for f in report["foreign"]}


def test_seed_generates_the_work_seed_so_the_first_vm_clones_it(host: tuple[Path, Path]) -> None:
    specs, state = host
    seeded = run(specs, state, "--log-format", "json", "seed")
    assert seeded.returncode == 0, seeded.stderr
    assert [r["stage"] for r in records(seeded.stderr)] == ["seed_generate"]
    assert not (state / "vms").exists(), "seed touches nothing but seeds"
    out = warmvm(specs, state, "--log-format", "json", "reconcile")
    stages = [r.get("stage") for r in records(out.stderr)]
    assert "disk_clone" in stages and "disk_scratch" not in stages and "seed_generate" not in stages
    assert leaks(specs, state) == set()
