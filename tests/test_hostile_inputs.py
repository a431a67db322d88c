"""What a guest, a crafted image or a careless spec can try against the host, each refused.

Real parts: a crafted ext4 image patched byte by byte, real QEMU processes (their uid, capabilities
and seccomp mode read from /proc), real files and links in the state directory.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from controller.adapters import ext4

from .support.cli import network_spec, qemu_pid, vm_spec, warmvm, write
from .support.images import ROOT_FILES, demo_image_spec, image_spec, make_kernel, make_rootfs


def crafted_rootfs(path: Path, tmp: Path, evil_name: str) -> None:
    """An ext4 whose /root holds an entry named `evil_name` (with `/` in it, which no tool makes but
    a crafted image can hold): built with a placeholder name of the same length, then patched."""
    src = tmp / "crafted-src"
    placeholder = "Q" * len(evil_name)
    (src / "root").mkdir(parents=True)
    (src / "root" / placeholder).write_bytes(b"written by the image\n")
    (src / "etc").mkdir()
    subprocess.run(["truncate", "-s", "16M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^metadata_csum,^dir_index", "-d", str(src), str(path)], check=True)
    data = bytearray(path.read_bytes())
    at = data.find(placeholder.encode())
    assert at > 0 and data.find(placeholder.encode(), at + 1) == -1
    data[at:at + len(evil_name)] = evil_name.encode()
    path.write_bytes(bytes(data))


def test_a_crafted_rootfs_cannot_write_outside_the_extraction(netns: str, tmp_path: Path) -> None:
    target = Path("/tmp") / f"wvpwn-{uuid.uuid4().hex[:8]}"
    evil = "../" * 16 + str(target).lstrip("/")
    specs, state = tmp_path / "specs", tmp_path / "state"
    (specs / "img").mkdir(parents=True)
    make_kernel(specs / "img" / "vmlinuz")
    crafted_rootfs(specs / "img" / "rootfs.ext4", tmp_path, evil)
    write(specs / "net.yaml", network_spec(size=0))
    write(specs / "image.yaml", image_spec())
    write(specs / "vm.yaml", vm_spec("vm-a", running="false", diskSize="64Mi"))
    try:
        result = warmvm(specs, state, "reconcile")
        assert not target.exists(), "the crafted image wrote a file on the host"
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "this image is refused" in result.stderr
    finally:
        target.unlink(missing_ok=True)


def test_a_normal_image_still_extracts(tmp_path: Path) -> None:
    make_rootfs(tmp_path / "rootfs.ext4", ROOT_FILES, tmp_path)
    ext4.extract_dir(tmp_path / "rootfs.ext4", "/root", tmp_path / "out")
    assert (tmp_path / "out" / "README").read_bytes() == ROOT_FILES["README"]


def test_a_state_directory_others_can_write_is_refused(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    state.mkdir()
    os.chmod(state, 0o777)
    result = warmvm(specs, state, "reconcile")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "state directory refused" in result.stderr and "writable by group and others" in result.stderr
    assert not (state / "instance").exists(), "nothing is written into it"


def test_a_spec_directory_another_user_owns_is_refused(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    os.chown(specs, 65534, 65534)  # nobody: it could make root hand any host file to a guest
    result = warmvm(specs, state, "plan")
    assert result.returncode == 1 and "spec refused" in result.stderr and "owned by uid 65534" in result.stderr
    os.chown(specs, 0, 0)
    os.chmod(specs / "net.yaml", 0o666)
    result = warmvm(specs, state, "plan")
    assert result.returncode == 1 and "net.yaml is writable by group and others" in result.stderr


def test_a_planted_ssh_key_is_refused(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=0))
    (state / "ssh").mkdir(parents=True)
    os.chmod(state, 0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(state / "ssh" / "id_ed25519")],
                   check=True)
    os.chmod(state / "ssh" / "id_ed25519", 0o644)  # not how warmvm makes its key
    result = warmvm(specs, state, "reconcile")
    assert result.returncode == 1 and "not a key warmvm made" in result.stderr


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.mark.e2e
def test_qemu_runs_unprivileged_without_capabilities_under_seccomp(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi"))
    assert warmvm(specs, state, "reconcile", timeout=300).returncode == 0
    st = status(qemu_pid(state, "vm-a"))
    assert st["Uid"].split()[0] != "0" and st["Uid"].split()[1] != "0"
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    assert st["Seccomp"] == "2"
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "reconcile", timeout=120).returncode == 0


@pytest.mark.e2e
def test_a_qcow2_header_a_guest_writes_on_its_raw_disk_opens_no_host_file(demo_host: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    specs, state = demo_host
    secret = tmp_path / "host-secret"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "--clone-method", "sparse", "reconcile").returncode == 0
    disk = state / "vms" / "vm-a" / "disk.img"
    # what a guest can write at the start of its raw disk: a qcow2 header naming a host file as backing
    # (the ext4 superblock at 1024 stays intact, so the guest still boots)
    name = str(secret).encode()
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + (512).to_bytes(8, "big") + len(name).to_bytes(4, "big")
    with open(disk, "r+b") as f:
        f.write(header)
        f.seek(512)
        f.write(name)
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi"))
    assert warmvm(specs, state, "--clone-method", "sparse", "reconcile", timeout=300).returncode == 0
    pid = qemu_pid(state, "vm-a")
    opened = {os.path.realpath(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert str(secret) not in opened
    assert '"driver": "raw", "file": "work-file"' in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
        errors="replace").replace("\0", " ")
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "reconcile", timeout=120).returncode == 0


@pytest.mark.e2e
def test_a_console_log_linked_to_a_host_file_leaves_that_file_untouched(demo_host: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    specs, state = demo_host
    target = tmp_path / "root-only"
    target.write_text("do not truncate\n")
    os.chmod(target, 0o600)
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "reconcile").returncode == 0
    (state / "vms" / "vm-a" / "console.log").symlink_to(target)
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi"))
    assert warmvm(specs, state, "reconcile", timeout=300).returncode == 0
    assert target.read_text() == "do not truncate\n"
    assert not (state / "vms" / "vm-a" / "console.log").is_symlink()
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "reconcile", timeout=120).returncode == 0


@pytest.mark.e2e
def test_a_comma_in_an_image_path_reaches_qemu_escaped(demo_host: tuple[Path, Path], tmp_path: Path,
                                                       demo_image: Path) -> None:
    odd = tmp_path / "img,bogus=1"
    odd.mkdir()
    for name in ("vmlinuz", "initrd.img", "rootfs.ext4"):
        os.link(demo_image / name, odd / name) if os.stat(demo_image).st_dev == os.stat(odd).st_dev \
            else subprocess.run(["cp", "--sparse=always", str(demo_image / name), str(odd / name)], check=True)
    specs, state = demo_host
    write(specs / "image.yaml", demo_image_spec(demo_image, boot_files=odd))
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi"))
    result = warmvm(specs, state, "reconcile", timeout=300)
    assert result.returncode == 0, result.stderr
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "reconcile", timeout=120).returncode == 0


@pytest.mark.e2e
def test_each_vm_has_its_own_pinned_host_key_and_a_swapped_one_is_refused(demo_host: tuple[Path, Path],
                                                                           demo_image: Path) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi") + "---\n" + vm_spec("vm-b", diskSize="64Mi"))
    assert warmvm(specs, state, "reconcile", timeout=300).returncode == 0
    keys = {vm: (state / "vms" / vm / "ssh_host_ed25519_key.pub").read_text().split()[1] for vm in ("vm-a", "vm-b")}
    assert keys["vm-a"] != keys["vm-b"], "no two VMs share a host key"
    # what the demo image's build leaves beside its rootfs: no host key any more
    assert not any(b"dropbear_ed25519_host_key" in p.name.encode() for p in demo_image.iterdir())
    for vm in ("vm-a", "vm-b"):  # each guest proves the key pinned for it (StrictHostKeyChecking=yes)
        assert warmvm(specs, state, "ssh", vm, "--", "hostname").stdout.strip() == vm
    pinned = state / "vms" / "vm-a" / "known_hosts"
    pinned.write_text(f"warmvm-vm-a ssh-ed25519 {keys['vm-b']}\n")  # vm-a now expected to show vm-b's key
    refused = warmvm(specs, state, "ssh", "vm-a", "--", "true")
    assert refused.returncode != 0 and "Host key verification failed" in refused.stderr
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi", running="false") + "---\n"
          + vm_spec("vm-b", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "reconcile", timeout=120).returncode == 0


def test_a_console_log_is_capped_and_a_link_there_is_not_followed(tmp_path: Path) -> None:
    """A log a QEMU of before the console FIFOs writes itself: cut when a pass starts."""
    from controller.adapters.qemu import console as qemu
    from controller.statedir.layout import VmFiles
    files = VmFiles(tmp_path)
    files.console.write_bytes(b"x" * (qemu.CONSOLE_CAP + 4096) + b"the last line\n")
    assert qemu.cap(files)
    kept = files.console.read_bytes()
    assert len(kept) <= qemu.CONSOLE_KEEP + 100 and kept.endswith(b"the last line\n")
    assert kept.startswith(b"[warmvm: console log cut")
    files.console.unlink()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"y" * (qemu.CONSOLE_CAP + 1))
    files.console.symlink_to(target)
    assert not qemu.cap(files) and target.stat().st_size == qemu.CONSOLE_CAP + 1


def test_the_host_key_is_handed_over_in_dropbears_own_format(tmp_path: Path) -> None:
    """Converted on the host (converting it in the guest cost 0.23 s of every boot): the same key."""
    from controller.adapters.ssh import dropbear_key
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    blob = dropbear_key((tmp_path / "k").read_text())
    public = (tmp_path / "k.pub").read_text().split()[1]
    import base64
    wire = base64.b64decode(public)  # string "ssh-ed25519", string the 32-byte public key
    assert blob[:15] == b"\x00\x00\x00\x0bssh-ed25519" and blob[15:19] == (64).to_bytes(4, "big")
    assert blob[19 + 32:] == wire[-32:], "the public half of dropbear's key is the pinned one"
    with pytest.raises(ValueError):
        dropbear_key("not a key")
