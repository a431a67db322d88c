"""Images for the tests: a fake one that needs no boot, and the demo guest's spec for those that boot.

The fake image's kernel is a stand-in (a file with a bzImage header): the spec check only reads that
header, and nothing boots it. Its rootfs is a real ext4 image (mkfs.ext4), holding ROOT_FILES in /root.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from controller.adapters import ext4

from .cli import REPO, network_spec, write

ROOT_FILES = {"README": b"hello from the image\n", "bin/tool.sh": b"#!/bin/sh\necho tool\n",
              "data/blob.bin": os.urandom(300_000)}

DEMO_IMAGE = Path(os.environ.get("WARMVM_TEST_IMAGE", REPO / "state" / "demo-image"))


def make_kernel(path: Path) -> Path:
    """A stand-in kernel: only the bzImage magic that the spec check reads (never booted here)."""
    data = bytearray(4096)
    data[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(data))
    return path


def make_rootfs(path: Path, files: dict[str, bytes], tmp: Path) -> Path:
    src = tmp / f"rootfs-src-{path.stem}"
    for rel, content in files.items():
        f = src / "root" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content)
    (src / "etc").mkdir(parents=True, exist_ok=True)
    tmp_out = path.with_suffix(".new")
    ext4.build_ext4(tmp_out, 16 << 20, src)
    tmp_out.replace(path)
    return path


def image_spec(name: str = "demo", default: bool = True, seed: str | None = None) -> str:
    """The fake image's spec (specs/img/vmlinuz, specs/img/rootfs.ext4), `seed` its workSeed."""
    lines = [f"apiVersion: warmvm/v1\nkind: Image\nmetadata:\n  name: {name}\nspec:\n",
             "  kernel: img/vmlinuz\n  rootfs: img/rootfs.ext4\n", f"  default: {str(default).lower()}\n"]
    if seed:
        lines.append(f"  workSeed: {seed}\n")
    return "".join(lines)


def fake_image(specs: Path, tmp_path: Path) -> None:
    """specs/img/vmlinuz (a kernel by its header only) and specs/img/rootfs.ext4 holding ROOT_FILES:
    enough for every step but a boot."""
    (specs / "img").mkdir(parents=True)
    make_kernel(specs / "img" / "vmlinuz")
    make_rootfs(specs / "img" / "rootfs.ext4", ROOT_FILES, tmp_path)


def fake_host(tmp_path: Path, pool_size: int, seed: str | None = None) -> tuple[Path, Path]:
    """specs/ (under tmp_path) with the fake image as the default, `seed` its workSeed, and the default
    network with a pool of `pool_size`; state/ beside it, not made yet. The test's namespace is the host."""
    specs, state = tmp_path / "specs", tmp_path / "state"
    fake_image(specs, tmp_path)
    write(specs / "net.yaml", network_spec(size=pool_size))
    write(specs / "image.yaml", image_spec(seed=seed))
    return specs, state


def build_demo_image() -> Path:
    """The demo guest, built by hack/build-image.sh (cached: at once when it is up to date)."""
    subprocess.run(["bash", str(REPO / "hack" / "build-image.sh"), str(DEMO_IMAGE)], check=True,
                   stdin=subprocess.DEVNULL)
    return DEMO_IMAGE


def demo_image_spec(image: Path, name: str = "demo", default: bool = True, kernel: Path | None = None,
                    boot_files: Path | None = None) -> str:
    """The Image spec of the demo guest built in `image`: its kernel, initrd and rootfs (from the directory
    `boot_files` when given; `kernel` another kernel file), its /root the work seed."""
    boot_files = boot_files or image
    kernel = kernel or boot_files / "vmlinuz"
    return (f"apiVersion: warmvm/v1\nkind: Image\nmetadata:\n  name: {name}\nspec:\n"
            f"  kernel: '{kernel}'\n  initrd: '{boot_files}/initrd.img'\n  rootfs: '{boot_files}/rootfs.ext4'\n"
            f"  workSeed:\n    from: '{image}/root'\n  default: {str(default).lower()}\n")
