"""ext4 images: inspected (format, size, info), built from a directory, read from and written into
with debugfs. Nothing here mounts a file system; a guest-written image is never probed for its format."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...base.errors import PermanentError, WarmvmError, os_error
from ...base.kinds import DiskFormat
from .tools import (
    BLOCK,
    EXT4_MAGIC,
    GROUP_BYTES,
    INODE_RATIO,
    INODE_SIZE,
    NOT_FOUND,
    QCOW2_MAGIC,
    SUPERBLOCK,
    check_size,
    debugfs,
    quote,
    read_bytes,
    run,
)


@dataclass(frozen=True)
class Ext4Info:
    block_size: int
    blocks: int
    inodes: int
    label: str

    @property
    def size(self) -> int:
        return self.block_size * self.blocks



def disk_format(path: Path) -> DiskFormat:
    """qcow2 if the file starts with the qcow2 magic, else raw."""
    return DiskFormat.QCOW2 if read_bytes(path, 0, 4) == QCOW2_MAGIC else DiskFormat.RAW


def virtual_size(path: Path) -> int:
    """Size the guest sees: the file size, or the qcow2 header's size field."""
    if disk_format(path) is DiskFormat.QCOW2:
        return int(struct.unpack(">Q", read_bytes(path, 24, 8))[0])
    return path.stat().st_size


def is_ext4(path: Path) -> bool:
    """True if a raw file holds an ext2/3/4 superblock (a qcow2 overlay does not)."""
    try:
        magic = read_bytes(path, SUPERBLOCK + 56, 2)
    except WarmvmError:
        return False
    return len(magic) == 2 and struct.unpack("<H", magic)[0] == EXT4_MAGIC


def ext4_info(image: Path) -> Ext4Info:
    """Geometry from the superblock of a raw image, without a subprocess."""
    sb = read_bytes(image, SUPERBLOCK, 1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 56)[0] != EXT4_MAGIC:
        raise PermanentError(f"{image}: not an ext4 image")
    inodes, blocks_lo = struct.unpack_from("<II", sb, 0)
    incompat = struct.unpack_from("<I", sb, 96)[0]
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & 0x80 else 0
    label = sb[120:136].split(b"\0")[0].decode(errors="replace")
    block_size = 1024 << struct.unpack_from("<I", sb, 24)[0]
    return Ext4Info(block_size, blocks_lo | blocks_hi << 32, inodes, label)


def _tree_stats(src: Path) -> tuple[int, int]:
    """(bytes an ext4 needs for the tree's data, directories and inodes; entry count)."""
    total, entries, seen = 0, 0, set()

    def walk(d: Path) -> int:
        nonlocal total, entries
        dir_bytes = 24  # "." and ".."
        for e in os.scandir(d):
            st = e.stat(follow_symlinks=False)
            dir_bytes += 8 + (len(e.name.encode()) + 3) // 4 * 4
            if (st.st_dev, st.st_ino) in seen:
                continue  # hard link: counted once
            seen.add((st.st_dev, st.st_ino))
            entries += 1
            total += INODE_SIZE
            if e.is_dir(follow_symlinks=False):
                sub = walk(Path(e.path))  # walk() adds to total: not "total += walk()"
                total += sub
            elif e.is_symlink():
                total += BLOCK if len(os.readlink(e.path)) >= 60 else 0
            elif e.is_file(follow_symlinks=False):
                total += _round_up(min(st.st_size, st.st_blocks * 512) or st.st_size, BLOCK)
        return _round_up(dir_bytes, BLOCK)

    try:
        root = walk(src)
        total += root
    except OSError as e:
        raise os_error(f"{src}: cannot read tree", e) from e
    return total, entries


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def content_size(src_dir: Path) -> int:
    """Bytes an ext4 needs to hold src_dir (excluding journal and fs metadata)."""
    return _tree_stats(src_dir)[0]


def _inode_count(size: int, entries: int) -> int:
    # resize2fs keeps inodes per group, so a small base seed gets the default
    # density of a full group: a grown seed then has as many inodes as a disk
    # built at that size. Capped so inode tables take at most 1/8 of a tiny fs.
    groups = -(-size // GROUP_BYTES)
    dense = min(groups * (GROUP_BYTES // INODE_RATIO), size // (8 * INODE_SIZE))
    return max(dense, entries + entries // 4 + 64)


@contextlib.contextmanager
def removed_on_failure(path: Path, what: str) -> Iterator[None]:
    """A half-written `path` is removed if the block fails; an OSError is translated."""
    try:
        yield
    except OSError as e:
        path.unlink(missing_ok=True)
        raise os_error(f"{path}: {what}", e) from e
    except WarmvmError:
        path.unlink(missing_ok=True)
        raise


def build_ext4(out: Path, size: int, src_dir: Path | None = None, label: str = "") -> None:
    """Creates a sparse ext4 of exactly size bytes at out, populated from src_dir.

    No reserved blocks (-m 0): the guest's only user is root. Inode tables and
    journal are left sparse (lazy init; mke2fs marks them zeroed on a file).
    """
    check_size(size, out)
    if len(label.encode()) > 16:
        raise PermanentError(f"{out}: label {label!r} longer than 16 bytes")
    entries = _tree_stats(src_dir)[1] if src_dir is not None else 0
    args = ["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-m", "0",
            "-N", str(_inode_count(size, entries)), "-E", "lazy_itable_init=1,lazy_journal_init=1"]
    args += ["-L", label] if label else []
    args += ["-d", str(src_dir)] if src_dir is not None else []
    with removed_on_failure(out, "cannot create"):
        with open(out, "wb") as f:
            f.truncate(size)
        run([*args, str(out)], out)
        if src_dir is not None:
            _copy_root_attrs(out, src_dir)


def _copy_root_attrs(image: Path, src_dir: Path) -> None:
    # mke2fs -d copies every entry's mode and owner except the root directory's.
    st = src_dir.stat()
    if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (0o755, 0, 0):
        debugfs(image, [f"sif / mode 0{0o40000 | st.st_mode & 0o7777:o}",
                         f"sif / uid {st.st_uid}", f"sif / gid {st.st_gid}"], write=True)


def _types(image: Path, paths: list[str]) -> dict[str, str | None]:
    """Inode type ("directory", "regular", ...) of each path, None if missing."""
    out = debugfs(image, [f"stat {quote(p)}" for p in paths], allow=NOT_FOUND)
    found: dict[str, str | None] = dict.fromkeys(paths)
    for part in out.split("debugfs: stat ")[1:]:
        head, _, body = part.partition("\n")
        m = re.search(r"Type: (\w+)", body)
        found[head.strip().strip('"')] = m.group(1) if m else None
    return found


def ext4_has_dir(image: Path, path: str) -> bool:
    """True if path is a directory in the raw ext4 image (debugfs, no mount)."""
    return _types(image, [path])[path] == "directory"


def extract_dir(image: Path, path: str, dest_dir: Path) -> None:
    """Copies directory path of a raw ext4 image to dest_dir (must not exist), no mount. The image is
    untrusted: its names are checked first (see _check_names), so the copy cannot write outside."""
    if dest_dir.exists():
        raise PermanentError(f"{dest_dir}: already exists")
    if not ext4_has_dir(image, path):
        raise PermanentError(f"{image}: no directory {path}")
    _check_names(image, path)
    stage = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}."))
    try:
        debugfs(image, [f"rdump {quote(path)} {quote(stage)}"])
        name = PurePosixPath(path).name
        (stage / name if name else stage).rename(dest_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


_LISTED = re.compile(r"^/(\d+)/([0-7]+)/\d+/\d+/(.*)/\d*/$")  # debugfs ls -p: /INODE/MODE/UID/GID/NAME/SIZE/
MAX_ENTRIES = 1_000_000


def _check_names(image: Path, top: str) -> None:
    """debugfs rdump joins entry names to the destination as they are: a crafted image whose entry is
    named `../../etc/cron.d/x` (ext4 does not forbid `/` in a name to a crafted image), or that has the
    same name twice (a link, then a directory of that name), would write outside it. Every directory is
    listed level by level first; such an image is refused, with its name and the entry."""
    level, seen = [top.rstrip("/") or "/"], 0
    while level:
        out = debugfs(image, [f"ls -p {quote(d)}" for d in level])
        below: list[str] = []
        for directory, block in zip(level, out.split("debugfs: ls -p ")[1:], strict=True):
            names: set[str] = set()
            for line in block.splitlines()[1:]:  # the first is the rest of the echoed command
                if not line:
                    continue
                m = _LISTED.match(line)
                if m is not None and m.group(1) == "0":
                    continue  # an unused slot (lost+found keeps some): nothing is written for it
                name = m.group(3) if m else line
                if m is None or "/" in name or name in names:
                    raise PermanentError(f"{image}: {directory}: entry {name[:80]!r} could be written outside "
                                         "the copy; this image is refused (crafted or corrupt)")
                if name in (".", ".."):
                    continue
                names.add(name)
                if int(m.group(2), 8) & 0o170000 == 0o040000:
                    below.append(f"{directory.rstrip('/')}/{name}")
            seen += len(names)
        if seen > MAX_ENTRIES:
            raise PermanentError(f"{image}: {top} holds more than {MAX_ENTRIES} entries; refused")
        level = below


def inject_file(image: Path, guest_path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    """Writes a file into a raw ext4 image (replacing it); missing parents get mode 0700. The data is
    staged beside the image (the caller's scratch area), so that a kill leaves nothing elsewhere."""
    target = PurePosixPath(guest_path)
    if not target.is_absolute() or target.name == "":
        raise PermanentError(f"{image}: guest path {guest_path!r} must be absolute")
    parents = [str(p) for p in reversed(target.parents)][1:]
    kinds = _types(image, [*parents, str(target)])
    cmds: list[str] = []
    for d in parents:
        if kinds[d] is None:
            cmds += [f"mkdir {quote(d)}", f"sif {quote(d)} mode 040700", f"sif {quote(d)} uid {uid}",
                     f"sif {quote(d)} gid {gid}"]
        elif kinds[d] != "directory":
            raise PermanentError(f"{image}: {d} exists and is not a directory")
    if kinds[str(target)] not in (None, "regular"):
        raise PermanentError(f"{image}: {target} exists and is not a regular file")
    if kinds[str(target)] == "regular":
        cmds.append(f"rm {quote(target)}")
    with tempfile.NamedTemporaryFile(dir=image.parent, prefix=f".{image.name}.inject-") as tmp:
        tmp.write(data)
        tmp.flush()
        cmds += [f"write {quote(tmp.name)} {quote(target)}", f"sif {quote(target)} mode 0{0o100000 | mode & 0o7777:o}",
                 f"sif {quote(target)} uid {uid}", f"sif {quote(target)} gid {gid}"]
        debugfs(image, cmds, write=True)
