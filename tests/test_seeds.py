"""Images, work seeds and VM work disks, end to end through the CLI with real e2fsprogs.

The kernel file here is a stand-in (a file with a bzImage header): these tests
never boot it, and the spec check only reads that header. Everything else is
real: ext4 images built with mkfs.ext4, read back with debugfs, qemu-img.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters import ext4 as disks

from .support.cli import REPO, command, reconcile_records, records, vm_spec, warmvm, write
from .support.images import ROOT_FILES, fake_host, image_spec, make_rootfs
from .support.waits import wait_for


@pytest.fixture
def image_env(netns: str, tmp_path: Path) -> tuple[Path, Path]:
    return fake_host(tmp_path, pool_size=0)


def stages(records: list[dict], subject: str | None = None) -> list[str]:  # type: ignore[type-arg]
    return [r["stage"] for r in records if "stage" in r and (subject is None or r["object"] == subject)]


def disk_record(state: Path, vm: str) -> dict:  # type: ignore[type-arg]
    return json.loads((state / "vms" / vm / "disk.json").read_text())


def disk_path(state: Path, vm: str) -> Path:
    return state / "vms" / vm / "disk.img"


def expected_tree(state: Path) -> dict[str, bytes | str | None]:
    tree: dict[str, bytes | str | None] = {"bin": None, "data": None, ".ssh": None}
    tree.update(ROOT_FILES)
    tree[".ssh/authorized_keys"] = (state / "ssh" / "id_ed25519.pub").read_bytes()
    return tree


def assert_disk_holds_the_image_root(state: Path, vm: str, size: int) -> None:
    record = disk_record(state, vm)
    path = disk_path(state, vm)
    assert disks.virtual_size(path) == size and record["size"] == size
    assert disks.read_tree(path) == expected_tree(state)
    disks.fsck(path)


def test_first_vm_takes_the_slow_path_then_the_seed_serves_the_next(image_env: tuple[Path, Path]) -> None:
    specs, state = image_env
    write(specs / "vm-a.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    first = reconcile_records(specs, state)
    assert sorted(stages(first, "vm/vm-a")) == ["disk_scratch", "ip_assign", "tap_claim"]
    assert "seed_generate" in stages(first)
    assert disk_record(state, "vm-a")["taken"] == "scratch"
    seeds = sorted((state / "images" / "demo").glob("seed-*.ext4"))
    write(specs / "vm-b.yaml", vm_spec("vm-b", running="false", diskSize="64Mi"))
    second = reconcile_records(specs, state)
    assert "seed_generate" not in stages(second)
    assert sorted(stages(second, "vm/vm-b")) == ["disk_clone", "ip_assign", "tap_claim"]
    assert disk_record(state, "vm-b")["taken"] == "seed:qcow2"  # the ext4 host's copy-on-write path
    assert_disk_holds_the_image_root(state, "vm-a", 64 << 20)
    assert_disk_holds_the_image_root(state, "vm-b", 64 << 20)
    assert stages(reconcile_records(specs, state)) == []
    base = [p for p in (state / "images" / "demo").glob("seed-*.ext4") if p.name.count("-") == 1]
    assert seeds[0] in base, "the seed is built once and reused"


@pytest.mark.parametrize("method", ["qcow2", "sparse"])
def test_every_clone_path_gives_the_same_disk(image_env: tuple[Path, Path], method: str) -> None:
    specs, state = image_env
    reconcile_records(specs, state)  # seed first
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="96Mi"))
    records = reconcile_records(specs, state, "--clone-method", method)
    assert stages(records, "image/demo") == ["seed_size"] and "disk_clone" in stages(records, "vm/vm-a")
    assert disk_record(state, "vm-a")["taken"] == f"seed:{method}"
    assert_disk_holds_the_image_root(state, "vm-a", 96 << 20)


@pytest.fixture
def xfs_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory on a small loop-mounted XFS with reflink, always unmounted and detached."""
    backing, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(backing, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(backing)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(backing), str(mnt)], check=True)
    try:
        yield mnt / "state"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)  # detaches the auto-cleared loop device


def test_reflink_path_on_a_reflink_capable_state_directory(image_env: tuple[Path, Path], xfs_state: Path) -> None:
    specs, _ = image_env
    reconcile_records(specs, xfs_state)
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    reconcile_records(specs, xfs_state)
    assert disk_record(xfs_state, "vm-a")["taken"] == "seed:reflink"
    assert_disk_holds_the_image_root(xfs_state, "vm-a", 64 << 20)


def test_image_without_seed_always_takes_the_slow_path(image_env: tuple[Path, Path]) -> None:
    specs, state = image_env
    write(specs / "image.yaml", image_spec(seed="none"))
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    records = reconcile_records(specs, state)
    assert "seed_generate" not in stages(records) and disk_record(state, "vm-a")["taken"] == "scratch"
    assert_disk_holds_the_image_root(state, "vm-a", 64 << 20)


def test_seed_is_regenerated_when_the_rootfs_changes(image_env: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = image_env
    write(specs / "vm-a.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    reconcile_records(specs, state)
    reconcile_records(specs, state)
    old_tree = disks.read_tree(disk_path(state, "vm-a"))
    make_rootfs(specs / "img" / "rootfs.ext4", {**ROOT_FILES, "README": b"new release\n"}, tmp_path / "v2")
    records = reconcile_records(specs, state)
    assert "seed_generate" in stages(records)
    write(specs / "vm-b.yaml", vm_spec("vm-b", running="false", diskSize="64Mi"))
    reconcile_records(specs, state)
    assert disks.read_tree(disk_path(state, "vm-b"))["README"] == b"new release\n"
    assert disks.read_tree(disk_path(state, "vm-a")) == old_tree, "old VMs keep their disks"


def test_disk_grows_and_refuses_to_shrink(image_env: tuple[Path, Path]) -> None:
    specs, state = image_env
    reconcile_records(specs, state)
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    reconcile_records(specs, state)
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="128Mi"))
    assert "disk_grow" in stages(reconcile_records(specs, state))
    assert_disk_holds_the_image_root(state, "vm-a", 128 << 20)
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    result = warmvm(specs, state, "reconcile")
    assert result.returncode == 1 and "shrinking is refused" in result.stderr
    assert disks.virtual_size(disk_path(state, "vm-a")) == 128 << 20


def test_with_no_retention_a_removed_vm_loses_its_disk_and_removed_image_its_seeds(
        image_env: tuple[Path, Path]) -> None:
    specs, state = image_env
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    reconcile_records(specs, state)
    disk = disk_path(state, "vm-a")
    (specs / "vm.yaml").unlink()
    assert "disk_delete" in stages(reconcile_records(specs, state, "--retain-removed", "0"))
    assert not disk.exists()
    (specs / "image.yaml").unlink()
    reconcile_records(specs, state, "--retain-removed", "0")
    assert not (state / "images" / "demo").exists()


def test_failed_seed_leaves_the_image_usable_through_the_fallback(image_env: tuple[Path, Path]) -> None:
    specs, state = image_env
    write(specs / "image.yaml", image_spec(seed="{from: 'rootfs:/root', size: 128Ki}"))  # cannot hold the files
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    result = warmvm(specs, state, "reconcile")
    assert result.returncode == 1 and "seed not built, VMs take the slow path" in result.stderr
    assert disk_record(state, "vm-a")["taken"] == "scratch"
    rows = json.loads(warmvm(specs, state, "get", "images", "-o", "json").stdout)
    assert rows[0]["seed"].startswith("failed: ")
    assert "seed_generate" not in warmvm(specs, state, "plan").stdout, "not retried until the inputs change"


def test_kill_during_seed_generation_leaves_no_usable_half_seed(image_env: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = image_env
    big = tmp_path / "bigroot"
    for i in range(40):
        (big / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (big / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(1 << 20))
    write(specs / "image.yaml", image_spec(seed=f"{{from: '{big}'}}"))
    proc = subprocess.Popen(command(specs, state, "reconcile"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((state / "tmp").glob("seed-*")), timeout=30, interval=0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert any((state / "tmp").glob("seed-*")), "the kill should land while the seed is being built"
    assert not list((state / "images" / "demo").glob("seed-*.ext4")) if (state / "images" / "demo").exists() else True
    plan = warmvm(specs, state, "plan")
    assert "seed_generate" in plan.stdout
    records = reconcile_records(specs, state)
    assert "seed_generate" in stages(records)
    assert not list((state / "tmp").iterdir()), "leftovers of the killed run are cleaned"


BAD_IMAGES = {
    "missing_kernel": ("  kernel: img/vmlinuz\n", "  kernel: img/nope\n", "image.yaml:6: spec.kernel: 'img/nope' does not exist"),
    "missing_rootfs": ("  rootfs: img/rootfs.ext4\n", "  rootfs: img/none.ext4\n", "image.yaml:7: spec.rootfs: 'img/none.ext4' does not exist"),
    "rootfs_not_ext4": ("  rootfs: img/rootfs.ext4\n", "  rootfs: img/vmlinuz\n", "image.yaml:7: spec.rootfs: 'img/vmlinuz' is not an ext4 image"),
    "kernel_not_a_kernel": ("  kernel: img/vmlinuz\n", "  kernel: img/rootfs.ext4\n", "image.yaml:6: spec.kernel: 'img/rootfs.ext4' is not a Linux kernel image"),
    "path_absent_from_rootfs": ("  default: true\n", "  default: true\n  workSeed: {from: 'rootfs:/home/x'}\n",
                                "image.yaml:9: spec.workSeed.from: '/home/x' is not a directory in 'img/rootfs.ext4'"),
    "missing_source_dir": ("  default: true\n", "  default: true\n  workSeed: {from: ./nowhere}\n",
                           "image.yaml:9: spec.workSeed.from: './nowhere' is not a directory"),
    "negative_size": ("  default: true\n", "  default: true\n  workSeed: {from: 'rootfs:/root', size: -5Mi}\n",
                      "image.yaml:9: spec.workSeed.size: '-5Mi' is not a quantity"),
    "zero_size": ("  default: true\n", "  default: true\n  workSeed: {from: 'rootfs:/root', size: 0}\n",
                  "image.yaml:9: spec.workSeed.size: must be greater than zero"),
    "unknown_unit": ("  default: true\n", "  default: true\n  workSeed: {from: 'rootfs:/root', size: 5MB}\n",
                     "image.yaml:9: spec.workSeed.size: '5MB' is not a quantity"),
    "absurd_size": ("  default: true\n", "  default: true\n  workSeed: {from: 'rootfs:/root', size: 900Ti}\n",
                    "image.yaml:9: spec.workSeed.size: 900Ti is absurdly large"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_input(image_env: tuple[Path, Path], case: str) -> None:
    specs, state = image_env
    old, new, expected = BAD_IMAGES[case]
    write(specs / "image.yaml", image_spec().replace(old, new))
    result = warmvm(specs, state, "plan")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert any(line.endswith(expected) or expected in line for line in result.stderr.splitlines()), result.stderr


def test_vm_image_errors(image_env: tuple[Path, Path]) -> None:
    specs, state = image_env
    write(specs / "image2.yaml", image_spec("other", default=True))
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", image="ghost") + "---\n" + vm_spec("vm-b", running="false", diskSize="4Ki"))
    errors = warmvm(specs, state, "plan").stderr
    assert "image2.yaml:8: spec.default: a second default image" in errors
    assert "vm.yaml:7: spec.image: Image 'ghost' does not exist" in errors
    assert "vm.yaml:13: spec.image: required: there is no default image" in errors
    write(specs / "image2.yaml", image_spec("other", default=False, seed="{from: 'rootfs:/root', size: 32Mi}"))
    write(specs / "vm.yaml", vm_spec("vm-b", running="false", image="other", diskSize="16Mi"))
    errors = warmvm(specs, state, "plan").stderr
    assert "vm.yaml:8: spec.diskSize: 16Mi is smaller than the work seed of image 'other' (32Mi)" in errors


def test_an_image_without_a_root_directory_fails_its_vm_in_one_line_not_a_traceback(
        image_env: tuple[Path, Path], tmp_path: Path) -> None:
    """`workSeed: none` and a rootfs with no /root: the disk cannot be built; the failure is an
    outcome of that one action (a one-line reason, exit 1), never a traceback."""
    specs, state = image_env
    src = tmp_path / "bare"
    (src / "etc").mkdir(parents=True)
    disks.build_ext4(specs / "img" / "rootfs.ext4", 16 << 20, src)
    write(specs / "image.yaml", image_spec(seed="none"))
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    result = warmvm(specs, state, "--log-format", "json", "reconcile")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failed = [r for r in records(result.stderr) if r.get("outcome") == "failed"]
    assert [r["stage"] for r in failed] == ["disk_scratch"]
    assert "no directory /root" in failed[0]["error"]
    assert not (state / "vms" / "vm-a" / "disk.img").exists()
