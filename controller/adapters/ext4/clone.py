"""Work disks from seeds: how this host can clone (reflink, qcow2, sparse), the clone, growing a disk
(raw or qcow2) with its file system, and e2fsck."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ...base.errors import PermanentError, WarmvmError, os_error
from ...base.kinds import CloneMethod, DiskFormat
from ...statedir.store import replacing, scratch_prefix
from .image import disk_format, ext4_info, removed_on_failure, virtual_size
from .tools import (
    BLOCK,
    FICLONE,
    check_size,
    debugfs,
    file_size,
    last_line,
    run,
    tool_env,
)


def detect_clone_methods(directory: Path) -> list[CloneMethod]:
    """Clone methods that work for files in directory, best first (probes FICLONE for real)."""
    methods = [CloneMethod.REFLINK] if _reflink_works(directory) else []
    if shutil.which("qemu-img", path=tool_env().get("PATH")):
        methods.append(CloneMethod.QCOW2)
    return [*methods, CloneMethod.SPARSE]


def _reflink_works(directory: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=scratch_prefix(".reflink-probe"))
    except OSError as e:
        raise os_error(f"{directory}: cannot create a probe file", e) from e
    try:
        os.write(fd, b"\0" * BLOCK)
        with open(name + ".clone", "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        for n in (name, name + ".clone"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(n)


def clone(src: Path, dest: Path, method: CloneMethod, size: int) -> None:
    """Makes dest a clone of the raw seed src; size must equal the seed's size."""
    if disk_format(src) is not DiskFormat.RAW:
        raise PermanentError(f"{src}: clone source must be a raw image")
    if virtual_size(src) != size:
        raise PermanentError(f"{dest}: size {size} differs from seed {src} ({virtual_size(src)}); "
                             "derive a sized seed first")
    with removed_on_failure(dest, f"{method.value} clone of {src} failed"):
        if method is CloneMethod.REFLINK:
            with open(src, "rb") as s, open(dest, "wb") as d:
                fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        elif method is CloneMethod.QCOW2:
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(src.resolve()), "-F", "raw",
                  str(dest), str(size)], dest)
        else:  # coreutils 9 reflinks by default: force a real copy
            run(["cp", "--reflink=never", "--sparse=always", str(src), str(dest)], dest)


def _resize(image: Path) -> None:
    """Grows the ext4 in image to the file's size, checking it first if resize2fs demands."""
    try:
        run(["resize2fs", str(image)], image)
    except PermanentError as e:
        if "Please run 'e2fsck -f" not in str(e):
            raise
        proc = subprocess.run(["e2fsck", "-fp", str(image)], capture_output=True, text=True, env=tool_env(),
                              check=False)
        if proc.returncode not in (0, 1):
            raise PermanentError(f"{image}: e2fsck -fp failed (exit {proc.returncode}): "
                            f"{last_line(proc.stdout + proc.stderr)}") from e
        run(["resize2fs", str(image)], image)


def grow(disk: Path, size: int, fmt: DiskFormat = DiskFormat.RAW) -> None:
    """Grows disk and its ext4 to size; a qcow2 overlay becomes a raw file. The VM must be stopped.

    `fmt` is the format warmvm recorded for the disk: never guessed from the content, which the
    guest writes (a raw disk whose guest wrote a qcow2 header would otherwise name any host file
    as its backing file)."""
    check_size(size, disk)
    current = virtual_size(disk) if fmt is DiskFormat.QCOW2 else file_size(disk)
    if size < current:
        raise PermanentError(f"{disk}: shrinking from {current} to {size} bytes is refused")
    if fmt is DiskFormat.QCOW2:
        if size > current:
            with replacing(disk, disk.parent) as tmp:
                run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(disk), str(tmp)], disk)
                _grow_raw(tmp, size)
        return
    _grow_raw(disk, size)


def _grow_raw(disk: Path, size: int) -> None:
    if file_size(disk) < size:
        try:
            os.truncate(disk, size)
        except OSError as e:
            raise os_error(f"{disk}: cannot extend to {size} bytes", e) from e
    if ext4_info(disk).size < size:  # also finishes a grow interrupted after truncate
        _resize(disk)
    _mark_itables_zeroed(disk)


_GROUP = re.compile(r"^Group (\d+): .*\[(.*)\]$")
_BG_FLAGS = {"INODE_UNINIT": 1, "BLOCK_UNINIT": 2, "ITABLE_ZEROED": 4}


def _mark_itables_zeroed(disk: Path) -> None:
    """resize2fs leaves the inode tables of the groups it adds unflagged ITABLE_ZEROED, so every guest
    that mounts the disk zeroes them in the background (ext4lazyinit: 2 MiB per 128 MiB group, 62 MB on
    a 4 GiB disk; in a qcow2 overlay, clusters written under the guest's boot). They are zeros already:
    the disk grew by truncate, a hole. Flagged here, once, for every clone of it."""
    listing = run(["dumpe2fs", str(disk)], disk).stdout
    cmds = []
    for line in listing.splitlines():
        m = _GROUP.match(line)
        if m is None:
            continue
        names = [n.strip() for n in m.group(2).split(",") if n.strip()]
        flags = sum(_BG_FLAGS.get(n, 0) for n in names)
        if not flags & _BG_FLAGS["ITABLE_ZEROED"]:
            cmds += [f"set_bg {m.group(1)} flags {flags | _BG_FLAGS['ITABLE_ZEROED']}",
                     f"set_bg {m.group(1)} checksum calc"]
    if cmds:
        debugfs(disk, cmds, write=True)


@contextlib.contextmanager
def as_raw(disk: Path) -> Iterator[Path]:
    """Yields disk itself if raw, else a temporary raw flattening of the qcow2 overlay."""
    if disk_format(disk) is DiskFormat.RAW:
        yield disk
        return
    with tempfile.TemporaryDirectory(prefix="warmvm-flat-") as d:
        raw = Path(d) / "disk.raw"
        run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], disk)
        yield raw


def fsck(disk: Path) -> None:
    """Raises PermanentError unless e2fsck -fn finds the ext4 in disk (raw or qcow2) clean."""
    with as_raw(disk) as raw:
        try:
            run(["e2fsck", "-fn", str(raw)], disk)
        except WarmvmError as e:
            raise type(e)(str(e).replace(str(raw), str(disk))) from e
