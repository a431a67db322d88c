"""Driver tests for controller.disks against the real e2fsprogs, qemu-img and xfsprogs.

No mocks: every test builds small sparse images under tmp_path and asserts what
the images hold. The reflink tests make a loop-mounted XFS and always unmount it
and detach its loop device.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters import ext4 as disks
from controller.adapters.ext4 import CloneMethod, DiskFormat
from controller.base.errors import PermanentError

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (run hack/install-deps.sh)")


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def e2fsprogs() -> None:
    need("mkfs.ext4", "debugfs", "resize2fs", "e2fsck")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A small /root-like tree: nested dirs, binary and text files, odd names, a symlink."""
    root = tmp_path / "src"
    (root / "projects/app/src").mkdir(parents=True)
    (root / ".config").mkdir()
    (root / "empty dir").mkdir()
    rng = random.Random(7)
    (root / "projects/app/src/blob.bin").write_bytes(rng.randbytes(1 * MiB + 123))
    (root / "projects/app/README").write_text("hello\n")
    (root / ".config/naïve name.txt").write_text("unicode and a space\n")
    (root / ".hushlogin").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("projects/app/README", root / "readme-link")
    root.chmod(0o700)
    return root


@pytest.fixture
def seed(tmp_path: Path, src: Path) -> Path:
    """A 64 MiB raw seed of src, with a key injected."""
    out = tmp_path / "seed.raw"
    disks.build_ext4(out, 64 * MiB, src, label="seed")
    disks.inject_file(out, "/.ssh/authorized_keys", b"ssh-ed25519 AAAA test\n", 0o600)
    return out


def seed_tree(src: Path) -> disks.Tree:
    return {**disks.read_dir_tree(src), ".ssh": None, ".ssh/authorized_keys": b"ssh-ed25519 AAAA test\n"}


@pytest.fixture(scope="module")
def xfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory on a loop-mounted XFS with reflink; unmounted and detached afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting an XFS loop device needs root")
    need("mkfs.xfs", "losetup", "mount", "umount")
    base = tmp_path_factory.mktemp("xfs")
    backing, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with open(backing, "wb") as f:
        f.truncate(512 * MiB)  # mkfs.xfs refuses file systems under 300 MB
    sh("mkfs.xfs", "-q", "-m", "reflink=1", str(backing))
    loop = sh("losetup", "--find", "--show", str(backing)).strip()
    mounted = False
    try:
        sh("mount", loop, str(mnt))
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
        backing.unlink(missing_ok=True)


# --- building and reading ---------------------------------------------------


def test_built_disk_holds_exactly_the_source_tree(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "disk.raw"
    disks.build_ext4(out, 64 * MiB, src, label="work")
    assert disks.read_tree(out) == disks.read_dir_tree(src)
    info = disks.ext4_info(out)
    assert (info.size, info.block_size, info.label) == (64 * MiB, 4096, "work")
    assert out.stat().st_size == 64 * MiB
    assert out.stat().st_blocks * 512 < 16 * MiB, "image should stay sparse"
    disks.fsck(out)


def test_built_disk_root_keeps_the_source_root_mode(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "disk.raw"
    disks.build_ext4(out, 64 * MiB, src)
    disks.extract_dir(out, "/", tmp_path / "back")
    assert (tmp_path / "back").stat().st_mode & 0o7777 == 0o700
    assert (tmp_path / "back/run.sh").stat().st_mode & 0o7777 == 0o755


def test_empty_disk_has_no_files(tmp_path: Path) -> None:
    out = tmp_path / "empty.raw"
    disks.build_ext4(out, 16 * MiB, None)
    assert disks.read_tree(out) == {}
    disks.fsck(out)


def test_content_that_does_not_fit_raises_and_leaves_no_file(tmp_path: Path, src: Path) -> None:
    (src / "big.bin").write_bytes(random.Random(1).randbytes(12 * MiB))
    out = tmp_path / "small.raw"
    with pytest.raises(PermanentError, match="small.raw.*mkfs.ext4 failed.*allocate block"):
        disks.build_ext4(out, 8 * MiB, src)
    assert not out.exists()


def test_size_that_is_not_a_block_multiple_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="multiple of 4096"):
        disks.build_ext4(tmp_path / "odd.raw", 64 * MiB + 512, None)


def test_content_size_counts_data_dirs_and_inodes(src: Path) -> None:
    data = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    size = disks.content_size(src)
    assert data < size < data + 256 * 1024


def test_seed_sized_from_content_holds_a_realistic_tree_and_grows_to_scratch_inodes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run([sys.executable, str(REPO / "hack/make-root.py"), str(root), "--size-mib", "8",
                    "--files", "1500"], check=True, capture_output=True)
    base_size = (int(disks.content_size(root) * 1.2) + 16 * MiB + MiB - 1) // MiB * MiB
    base = tmp_path / "base.raw"
    disks.build_ext4(base, base_size, root)
    assert disks.read_tree(base) == disks.read_dir_tree(root)
    sized = tmp_path / "sized.raw"
    disks.clone(base, sized, CloneMethod.SPARSE, base_size)
    disks.grow(sized, 1024 * MiB)
    scratch = tmp_path / "scratch.raw"
    disks.build_ext4(scratch, 1024 * MiB, root)
    default_inodes = 1024 * MiB // 16384  # what mke2fs gives 1 GiB by default
    assert disks.ext4_info(sized).inodes >= disks.ext4_info(scratch).inodes >= default_inodes
    assert disks.read_tree(sized) == disks.read_tree(scratch)
    disks.fsck(sized)


# --- key injection --------------------------------------------------------------


def test_injected_key_is_readable_with_its_mode_and_owner(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "disk.raw"
    disks.build_ext4(out, 64 * MiB, src)
    disks.inject_file(out, "/.ssh/authorized_keys", b"old key\n", 0o644)
    disks.inject_file(out, "/.ssh/authorized_keys", b"ssh-ed25519 AAAA new\n", 0o600, uid=1000, gid=1001)
    disks.extract_dir(out, "/.ssh", tmp_path / "ssh")
    key = tmp_path / "ssh/authorized_keys"
    assert key.read_bytes() == b"ssh-ed25519 AAAA new\n"
    assert (key.stat().st_mode & 0o7777, key.stat().st_uid, key.stat().st_gid) == (0o600, 1000, 1001)
    assert (tmp_path / "ssh").stat().st_mode & 0o7777 == 0o700
    assert disks.read_tree(out) == {**disks.read_dir_tree(src), ".ssh": None,
                                     ".ssh/authorized_keys": b"ssh-ed25519 AAAA new\n"}
    disks.fsck(out)


def test_inject_under_a_file_is_refused(seed: Path) -> None:
    with pytest.raises(PermanentError, match="not a directory"):
        disks.inject_file(seed, "/run.sh/key", b"x", 0o600)


# --- inspection -------------------------------------------------------------------


def test_is_ext4_only_for_ext4_images(tmp_path: Path, seed: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(random.Random(3).randbytes(64 * 1024))
    (tmp_path / "empty").write_bytes(b"")
    assert disks.is_ext4(seed)
    assert not disks.is_ext4(junk)
    assert not disks.is_ext4(tmp_path / "empty")
    assert not disks.is_ext4(tmp_path / "missing")
    assert disks.disk_format(junk) is DiskFormat.RAW


def test_debugfs_on_a_non_ext4_file_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 64 * 1024)
    with pytest.raises(PermanentError, match="junk: debugfs failed"):
        disks.ext4_has_dir(junk, "/root")


def test_root_directory_is_extracted_from_a_rootfs_without_mounting(tmp_path: Path, src: Path) -> None:
    rootfs_src = tmp_path / "rootfs"
    (rootfs_src / "etc").mkdir(parents=True)
    (rootfs_src / "etc/hostname").write_text("guest\n")
    shutil.copytree(src, rootfs_src / "root", symlinks=True)
    rootfs = tmp_path / "rootfs.ext4"
    disks.build_ext4(rootfs, 32 * MiB, rootfs_src)
    assert disks.ext4_has_dir(rootfs, "/root")
    assert not disks.ext4_has_dir(rootfs, "/etc/hostname")
    assert not disks.ext4_has_dir(rootfs, "/home")
    disks.extract_dir(rootfs, "/root", tmp_path / "extracted")
    assert disks.read_dir_tree(tmp_path / "extracted") == disks.read_dir_tree(src)
    assert (tmp_path / "extracted").stat().st_mode & 0o7777 == 0o700
    with pytest.raises(PermanentError, match="already exists"):
        disks.extract_dir(rootfs, "/root", tmp_path / "extracted")
    with pytest.raises(PermanentError, match="no directory /home"):
        disks.extract_dir(rootfs, "/home", tmp_path / "home")


def test_fsck_reports_a_damaged_file_system(tmp_path: Path, seed: Path) -> None:
    sh("debugfs", "-w", "-R", "clri /projects/app/README", str(seed))
    with pytest.raises(PermanentError, match="seed.raw: e2fsck failed"):
        disks.fsck(seed)


# --- cloning ----------------------------------------------------------------------


@pytest.mark.parametrize("method", [CloneMethod.SPARSE, CloneMethod.QCOW2])
def test_clone_holds_the_seed_files_at_the_seed_size(tmp_path: Path, src: Path, seed: Path,
                                                     method: CloneMethod) -> None:
    if method is CloneMethod.QCOW2:
        need("qemu-img")
    before = sha(seed)
    disk = tmp_path / "vm.disk"
    disks.clone(seed, disk, method, 64 * MiB)
    assert disks.disk_format(disk) is (DiskFormat.QCOW2 if method is CloneMethod.QCOW2 else DiskFormat.RAW)
    assert disks.virtual_size(disk) == 64 * MiB
    assert disks.read_tree(disk) == seed_tree(src)
    disks.fsck(disk)
    assert sha(seed) == before


def test_qcow2_clone_is_tiny_and_backed_by_the_seed(tmp_path: Path, seed: Path) -> None:
    need("qemu-img")
    disk = tmp_path / "vm.qcow2"
    disks.clone(seed, disk, CloneMethod.QCOW2, 64 * MiB)
    assert disk.stat().st_size < 1 * MiB
    assert f"backing file: {seed.resolve()}" in sh("qemu-img", "info", str(disk))


def test_clone_at_another_size_than_the_seed_is_refused(tmp_path: Path, seed: Path) -> None:
    with pytest.raises(PermanentError, match="differs from seed"):
        disks.clone(seed, tmp_path / "vm.raw", CloneMethod.SPARSE, 128 * MiB)
    assert not (tmp_path / "vm.raw").exists()


def test_clone_methods_without_reflink_on_this_file_system(tmp_path: Path) -> None:
    methods = disks.detect_clone_methods(tmp_path)
    assert methods[-1] is CloneMethod.SPARSE
    assert (CloneMethod.QCOW2 in methods) == (shutil.which("qemu-img") is not None)
    if sh("stat", "-f", "-c", "%T", str(tmp_path)).strip() in ("ext2/ext3", "tmpfs"):
        assert CloneMethod.REFLINK not in methods
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".reflink-probe")]


def test_reflink_clone_on_xfs_shares_the_seed_data(xfs_dir: Path, src: Path) -> None:
    assert disks.detect_clone_methods(xfs_dir)[0] is CloneMethod.REFLINK
    (src / "more.bin").write_bytes(random.Random(5).randbytes(16 * MiB))
    seed = xfs_dir / "seed.raw"
    disks.build_ext4(seed, 64 * MiB, src)
    os.sync()
    free = shutil.disk_usage(xfs_dir).free
    disks.clone(seed, xfs_dir / "reflink.raw", CloneMethod.REFLINK, 64 * MiB)
    os.sync()
    assert free - shutil.disk_usage(xfs_dir).free < 2 * MiB, "reflink must not copy the data"
    disks.clone(seed, xfs_dir / "sparse.raw", CloneMethod.SPARSE, 64 * MiB)
    os.sync()
    assert free - shutil.disk_usage(xfs_dir).free > 16 * MiB, "sparse must really copy (cp reflinks by default)"
    for name in ("reflink.raw", "sparse.raw"):
        disk = xfs_dir / name
        assert disks.virtual_size(disk) == 64 * MiB
        assert disks.read_tree(disk) == disks.read_dir_tree(src)
        disks.fsck(disk)
    disks.inject_file(xfs_dir / "reflink.raw", "/only-in-clone", b"x", 0o600)
    assert "only-in-clone" not in disks.read_tree(seed)
    for p in xfs_dir.iterdir():
        p.unlink()


# --- growing ------------------------------------------------------------------------


def test_grow_raw_disk_keeps_files_and_fills_the_new_size(tmp_path: Path, src: Path, seed: Path) -> None:
    disk = tmp_path / "vm.raw"
    disks.clone(seed, disk, CloneMethod.SPARSE, 64 * MiB)
    disks.grow(disk, 256 * MiB)
    assert disks.virtual_size(disk) == 256 * MiB
    assert disks.ext4_info(disk).size == 256 * MiB
    assert disks.read_tree(disk) == seed_tree(src)
    disks.fsck(disk)
    disks.grow(disk, 256 * MiB)  # already there: nothing to do
    assert disks.ext4_info(disk).size == 256 * MiB


def test_grow_finishes_a_grow_interrupted_after_truncate(tmp_path: Path, seed: Path) -> None:
    disk = tmp_path / "vm.raw"
    disks.clone(seed, disk, CloneMethod.SPARSE, 64 * MiB)
    os.truncate(disk, 128 * MiB)
    disks.grow(disk, 128 * MiB)
    assert disks.ext4_info(disk).size == 128 * MiB
    disks.fsck(disk)


def test_grow_of_a_disk_mounted_since_its_last_check_runs_e2fsck_first(tmp_path: Path, seed: Path) -> None:
    disk = tmp_path / "vm.raw"
    disks.clone(seed, disk, CloneMethod.SPARSE, 64 * MiB)
    subprocess.run(["debugfs", "-w", "-f", "-", str(disk)], input="ssv lastcheck 20200101\nssv mtime 20210101\n",
                   check=True, capture_output=True, text=True)
    refused = subprocess.run(["resize2fs", str(disk), "96M"], capture_output=True, text=True)
    assert "Please run 'e2fsck -f" in refused.stderr + refused.stdout
    disks.grow(disk, 128 * MiB)
    assert disks.ext4_info(disk).size == 128 * MiB
    disks.fsck(disk)


def test_grow_qcow2_overlay_flattens_it_and_leaves_the_seed_alone(tmp_path: Path, src: Path, seed: Path) -> None:
    need("qemu-img")
    before = sha(seed)
    disk = tmp_path / "vm.qcow2"
    disks.clone(seed, disk, CloneMethod.QCOW2, 64 * MiB)
    disks.grow(disk, 256 * MiB, DiskFormat.QCOW2)
    assert disks.disk_format(disk) is DiskFormat.RAW
    assert disks.virtual_size(disk) == 256 * MiB
    assert disks.ext4_info(disk).size == 256 * MiB
    assert disks.read_tree(disk) == seed_tree(src)
    disks.fsck(disk)
    assert sha(seed) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("method", [CloneMethod.SPARSE, CloneMethod.QCOW2])
def test_shrink_is_refused(tmp_path: Path, seed: Path, method: CloneMethod) -> None:
    if method is CloneMethod.QCOW2:
        need("qemu-img")
    disk = tmp_path / "vm.disk"
    disks.clone(seed, disk, method, 64 * MiB)
    before = sha(disk)
    fmt = DiskFormat.QCOW2 if method is CloneMethod.QCOW2 else DiskFormat.RAW
    with pytest.raises(PermanentError, match="vm.disk: shrinking .* refused"):
        disks.grow(disk, 32 * MiB, fmt)
    assert sha(disk) == before
    assert disks.virtual_size(disk) == 64 * MiB


def test_a_grown_disk_flags_its_new_inode_tables_zeroed_so_no_guest_zeroes_them(tmp_path: Path, seed: Path) -> None:
    """resize2fs leaves the new groups' inode tables unflagged: every guest would zero them after mounting
    (tens of MB into a qcow2 overlay). They are holes of the grown file, zeros already: flagged once."""
    disk = tmp_path / "vm.disk"
    disks.clone(seed, disk, CloneMethod.SPARSE, 64 * MiB)
    disks.grow(disk, 512 * MiB)
    groups = [line for line in subprocess.run(["dumpe2fs", str(disk)], capture_output=True, text=True).stdout
              .splitlines() if re.match(r"Group \d+:", line)]
    assert len(groups) == 4 and all("ITABLE_ZEROED" in g for g in groups), groups
    disks.fsck(disk)
