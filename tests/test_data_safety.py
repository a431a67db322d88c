"""No accident loses a VM's data: removals that forgive, one identity per state directory and instance.

Each test is an accident users have had: a spec file that blinks while an
editor saves it, a rename, a wrong --specs, the state directory spelt two
ways, two warmvm instances in one network namespace, a torn record, a full
disk, a name defined twice. The VMs here are provisioned but not booted
(`running: false`; the kernel is a stand-in): what matters is the work disk,
its inode and its files, and the devices.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.adapters import ext4
from controller.adapters.netlink.rtnl import dump_links
from controller.network.marks import parse_mark

from .support.cli import (
    REPO,
    assert_verified,
    command,
    instance,
    network_spec,
    reconcile,
    records,
    vm_record,
    vm_spec,
    warmvm,
    write,
)
from .support.daemon import Daemon
from .support.images import fake_host, image_spec
from .support.waits import wait_for

GUEST_FILE = "/notes/precious.txt"


@pytest.fixture
def host(netns: str, tmp_path: Path) -> tuple[Path, Path]:
    return fake_host(tmp_path, pool_size=1)


def disk(state: Path, vm: str) -> Path:
    return state / "vms" / vm / "disk.img"


def lease(state: Path, vm: str) -> str:
    return str(vm_record(state, vm)["ip"])


def write_guest_file(state: Path, vm: str, text: str) -> None:
    """What the guest would have written to its /root (the VM is stopped: its disk is ours to edit)."""
    ext4.inject_file(disk(state, vm), GUEST_FILE, text.encode(), 0o644)


def guest_file(path: Path) -> bytes | str | None:
    return ext4.read_tree(path).get(GUEST_FILE.lstrip("/"))


def provision(specs: Path, state: Path, *names: str) -> dict[str, int]:
    for name in names:
        write(specs / f"{name}.yaml", vm_spec(name, running="false", diskSize="64Mi"))
    reconcile(specs, state)
    for name in names:
        write_guest_file(state, name, f"{name}'s work\n")
    return {name: disk(state, name).stat().st_ino for name in names}


def converged_after(log: str, line: str) -> bool:
    """A pass that ended after the last log line holding `line` converged (its JSON summary says so)."""
    return any(r.get("converged") for r in records(log.rpartition(line)[2]))


def test_a_spec_that_blinks_under_watch_keeps_the_vms_disk_and_address(host: tuple[Path, Path]) -> None:
    specs, state = host
    inode = provision(specs, state, "vm-a")["vm-a"]
    ip = lease(state, "vm-a")
    saved = (specs / "vm-a.yaml").read_text()
    daemon = Daemon(specs, state, "--poll", "0.05", "--interval", "600")
    try:
        wait_for(lambda: daemon.finished() >= 1)  # the pass every start makes
        (specs / "vm-a.yaml").write_text("")  # an editor truncates, then writes the file again
        wait_for(lambda: "vm-a.yaml is empty" in daemon.log())  # a pass has read the empty file
        (specs / "vm-a.yaml").write_text(saved)
        wait_for(lambda: converged_after(daemon.log(), "vm-a.yaml is empty"))  # a pass has read it again
    finally:
        daemon.stop()
    log = daemon.log()
    assert "vm-a.yaml is empty" in log
    applied = [r["stage"] for r in records(log) if "stage" in r]
    for stage in ("disk_delete", "vm_trash", "vm_forget", "disk_clone", "ip_assign"):
        assert stage not in applied, log
    assert disk(state, "vm-a").stat().st_ino == inode
    assert guest_file(disk(state, "vm-a")) == b"vm-a's work\n"
    assert lease(state, "vm-a") == ip


def test_a_renamed_spec_puts_the_disk_in_the_trash_and_renaming_it_back_restores_it(
        host: tuple[Path, Path]) -> None:
    specs, state = host
    inode = provision(specs, state, "vm-a")["vm-a"]
    ip = lease(state, "vm-a")
    (specs / "vm-a.yaml").rename(specs / "vm-a.yaml.bak")
    out = reconcile(specs, state, "--log-format", "json")
    assert '"stage": "vm_trash"' in out.stderr
    assert not (state / "vms" / "vm-a").exists()
    rows = json.loads(warmvm(specs, state, "get", "trash", "-o", "json").stdout)
    assert [(r["vm"], r["ip"]) for r in rows] == [("vm-a", ip)]
    (specs / "vm-a.yaml.bak").rename(specs / "vm-a.yaml")
    out = reconcile(specs, state, "--log-format", "json")
    assert '"stage": "vm_restore"' in out.stderr and '"stage": "disk_clone"' not in out.stderr
    assert disk(state, "vm-a").stat().st_ino == inode, "its own disk back, not a new clone"
    assert guest_file(disk(state, "vm-a")) == b"vm-a's work\n"
    assert lease(state, "vm-a") == ip
    assert json.loads(warmvm(specs, state, "get", "trash", "-o", "json").stdout) == []


def test_expired_trash_is_deleted_and_no_retention_deletes_at_once(host: tuple[Path, Path]) -> None:
    specs, state = host
    provision(specs, state, "vm-a")
    (specs / "vm-a.yaml").unlink()
    reconcile(specs, state)
    assert len(list((state / "trash").iterdir())) == 1
    reconcile(specs, state, "--retain-removed", "0")  # every entry is past a retention of nothing
    assert list((state / "trash").iterdir()) == []


def test_a_wrong_specs_directory_removes_nothing(host: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = host
    inodes = provision(specs, state, "vm-a", "vm-b")
    elsewhere = tmp_path / "not-the-specs"
    elsewhere.mkdir()
    plan = warmvm(elsewhere, state, "plan")
    assert "no spec describes anything, while 2 VMs exist" in plan.stderr and "(held back)" in plan.stdout
    out = reconcile(elsewhere, state, ok=False)
    assert out.returncode == 1 and "held back" in out.stderr
    assert {vm: disk(state, vm).stat().st_ino for vm in inodes} == inodes
    assert len([l for l in dump_links() if l.alias and "bridge:default" in l.alias]) == 1


def test_removing_most_vms_at_once_waits_for_confirmation(host: tuple[Path, Path]) -> None:
    specs, state = host
    inodes = provision(specs, state, "vm-a", "vm-b", "vm-c")
    (specs / "vm-a.yaml").unlink()
    (specs / "vm-b.yaml").unlink()
    out = reconcile(specs, state, ok=False)
    assert "2 of 3 VMs would be removed" in out.stderr
    assert {vm: disk(state, vm).stat().st_ino for vm in inodes} == inodes
    reconcile(specs, state, "--confirm-removals")
    assert sorted(p.name.split(".")[0] for p in (state / "trash").iterdir()) == ["vm-a", "vm-b"]


@pytest.mark.parametrize("spelling", ["relative", "symlink"])
def test_one_state_directory_spelt_two_ways_is_one(host: tuple[Path, Path], tmp_path: Path, spelling: str) -> None:
    specs, state = host
    inode = provision(specs, state, "vm-a")["vm-a"]
    if spelling == "symlink":
        other = tmp_path / "state-link"
        other.symlink_to(state)
        result = warmvm(specs, other, "plan")
    else:
        result = subprocess.run([sys.executable, "-m", "controller", "--specs", str(specs), "--state", "state",
                                 "plan"], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr  # nothing to do: same disks, same seeds
    assert disk(state, "vm-a").stat().st_ino == inode


def test_two_instances_in_one_namespace_never_touch_each_others_devices(netns: str, tmp_path: Path) -> None:
    a_specs, b_specs = tmp_path / "a" / "specs", tmp_path / "b" / "specs"
    a_state, b_state = tmp_path / "a" / "state", tmp_path / "b" / "state"
    write(a_specs / "net.yaml", network_spec(bridge="wvbr0", size=3))
    write(b_specs / "net.yaml", network_spec(bridge="wvbr1", cidr="10.89.0.0/24", size=2, prefix="tap-b-"))
    reconcile(a_specs, a_state)
    before = {l.name: (l.alias, l.master) for l in dump_links() if l.alias}
    reconcile(b_specs, b_state)
    write(b_specs / "net.yaml", network_spec(bridge="wvbr1", cidr="10.89.0.0/24", size=0, prefix="tap-b-"))
    reconcile(b_specs, b_state)
    (b_specs / "net.yaml").unlink()
    reconcile(b_specs, b_state)
    after = {l.name: (l.alias, l.master) for l in dump_links() if l.alias}
    assert after == before, "instance b changed or removed instance a's devices"
    assert len({parse_mark(alias).instance for alias, _ in after.values()}) == 1  # type: ignore[union-attr]


def test_devices_marked_before_instances_are_adopted_by_the_instance_that_names_them(
        netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2))
    reconcile(specs, state)
    for link in dump_links():  # what the previous version wrote: marks without an instance
        mark = parse_mark(link.alias)
        if mark is not None:
            legacy = str(mark).replace(f"{mark.instance}:", "")
            subprocess.run(["ip", "link", "set", link.name, "alias", legacy], check=True)
    out = reconcile(specs, state)
    assert out.stderr.count("device_adopt") == 3  # the bridge and its two pool TAPs
    ours = instance(state)
    marks = [parse_mark(l.alias) for l in dump_links() if l.alias]
    assert len(marks) == 3 and all(m is not None and m.instance == ours for m in marks)
    assert "0 applied" in reconcile(specs, state).stderr
    assert_verified(specs, state)


def test_an_empty_record_affects_only_its_own_vm_and_names_its_file(host: tuple[Path, Path]) -> None:
    specs, state = host
    inodes = provision(specs, state, "vm-a", "vm-b")
    (state / "vms" / "vm-a" / "vm.json").write_text("")  # what a power cut could once leave
    out = reconcile(specs, state, ok=False)
    assert f"{state}/vms/vm-a/vm.json: unreadable record" in out.stderr
    rows = json.loads(warmvm(specs, state, "get", "vms", "-o", "json").stdout)
    assert [r["name"] for r in rows if r["ip"] != "-"] == ["vm-b"]
    write(specs / "vm-b.yaml", vm_spec("vm-b", running="false", diskSize="128Mi"))  # vm-b still converges
    reconcile(specs, state, ok=False)
    assert ext4.ext4_info(disk(state, "vm-b")).size == 128 << 20
    assert disk(state, "vm-a").stat().st_ino == inodes["vm-a"]


def test_a_name_defined_twice_starts_nothing_and_leaves_the_old_vm_alone(host: tuple[Path, Path]) -> None:
    specs, state = host
    inode = provision(specs, state, "vm-a")["vm-a"]
    write(specs / "copy.yaml", vm_spec("vm-a", running="false", diskSize="128Mi"))
    out = reconcile(specs, state, ok=False)
    assert out.stderr.count("VM 'vm-a' is defined twice") == 2
    assert "disk_grow" not in out.stderr
    assert disk(state, "vm-a").stat().st_ino == inode and ext4.ext4_info(disk(state, "vm-a")).size == 64 << 20



def test_a_full_disk_during_seed_generation_is_retried_once_space_is_free(
        netns: str, tmp_path: Path, small_fs: Callable[[str], Path]) -> None:
    small_state = small_fs("40m")
    big = tmp_path / "root"
    big.mkdir()
    (big / "blob").write_bytes(os.urandom(24 << 20))
    specs, _ = fake_host(tmp_path, pool_size=0, seed=f"{{from: '{big}'}}")
    filler = small_state.parent / "filler"
    filler.write_bytes(b"\0" * (30 << 20))  # leaves ~10 MiB: not enough for the ~46 MiB seed
    first = reconcile(specs, small_state, ok=False)
    assert "seed_generate" in first.stderr and "retry" in first.stderr
    assert "seed_generate" in warmvm(specs, small_state, "plan").stdout, "a full disk is no permanent verdict"
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,size=120m", str(small_state.parent)], check=True)
    reconcile(specs, small_state)
    assert list((small_state / "images" / "demo").glob("seed-*.ext4"))
    assert list((small_state / "tmp").iterdir()) == []


def test_kill_9_at_random_points_of_provisioning_loses_and_doubles_nothing(
        host: tuple[Path, Path], tmp_path: Path) -> None:
    """Killed at random while it generates a seed, clones disks and leases addresses, then run to the
    end: every VM has exactly one disk and its own address, and nothing half-written is left."""
    specs, state = host
    root = tmp_path / "root"
    for i in range(12):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"f{i}").write_bytes(os.urandom(1 << 20))
    write(specs / "image.yaml", image_spec(seed=f"{{from: '{root}'}}"))
    for name in ("vm-a", "vm-b", "vm-c"):
        write(specs / f"{name}.yaml", vm_spec(name, running="false", diskSize="64Mi"))
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for _ in range(5):
        proc = subprocess.Popen(command(specs, state, "reconcile"), cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 1.2))  # deliberate: a random moment to kill it at, not a wait
        proc.kill()
        proc.wait()
    reconcile(specs, state)
    ips = [lease(state, vm) for vm in ("vm-a", "vm-b", "vm-c")]
    assert len(set(ips)) == 3, ips
    for vm in ("vm-a", "vm-b", "vm-c"):
        files = sorted(p.name for p in (state / "vms" / vm).iterdir())
        assert files == ["disk.img", "disk.json", "known_hosts", "ssh_host_ed25519_key",
                         "ssh_host_ed25519_key.dropbear", "ssh_host_ed25519_key.pub", "vm.json"], files
        assert ext4.read_tree(disk(state, vm))["d0/f0"] == (root / "d0" / "f0").read_bytes()
    assert list((state / "tmp").iterdir()) == []
    assert not list(Path("/tmp").glob("tmp*inject*")) and not list((state / "vms").glob("*/.*"))
    assert "0 applied" in reconcile(specs, state).stderr
    assert_verified(specs, state)
