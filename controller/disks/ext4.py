"""ext4 and disk-image files: builds, clones, grows and inspects them, for the disk driver.

The side effects on image files (mkfs.ext4 -d, debugfs, resize2fs, e2fsck,
qemu-img, the FICLONE ioctl), and no policy: which seed to build, at which
size, which clone method to use and when to grow is decided by the planner.
Nothing here mounts a file system. Functions write their output path
directly; callers that need atomicity write to a temporary name and rename
it (statedir.store.replacing). Failures are PermanentError, or TemporaryError
when they may pass by themselves (a full file system).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.errors import PermanentError, TemporaryError, WarmvmError, os_error
from ..statedir.store import replacing

BLOCK = 4096  # every image uses 4 KiB blocks; sizes must be multiples of it
GROUP_BYTES = BLOCK * 8 * BLOCK  # one block group (32768 blocks) = 128 MiB
INODE_RATIO = 16384  # mke2fs's default bytes per inode
INODE_SIZE = 256
FICLONE = 0x40049409  # _IOW(0x94, 9, int)
QCOW2_MAGIC = b"QFI\xfb"
SUPERBLOCK = 1024
EXT4_MAGIC = 0xEF53
_BANNER = re.compile(r"^(debugfs|resize2fs|e2fsck) \d+\.\d+")
_NOT_FOUND = "File not found by ext2_lookup"

# Path (relative, posix) -> file content (bytes), symlink target (str) or None (directory).
Tree = dict[str, bytes | str | None]


class CloneMethod(str, enum.Enum):
    REFLINK = "reflink"  # FICLONE: shares extents, needs XFS(reflink=1)/btrfs
    QCOW2 = "qcow2"  # overlay backed by the raw seed; the seed must never change
    SPARSE = "sparse"  # cp --sparse=always: copies the data, always works


class DiskFormat(str, enum.Enum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Ext4Info:
    block_size: int
    blocks: int
    inodes: int
    label: str

    @property
    def size(self) -> int:
        return self.block_size * self.blocks


def _env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "DEBUGFS_PAGER": "__none__", "PAGER": "cat"}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _BANNER.match(ln)]
    return lines[-1] if lines else "no message"


def _run(args: list[str], path: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, env=_env(), check=False)
    except FileNotFoundError as e:
        raise PermanentError(f"{path}: {args[0]} not found: {e}") from e
    if proc.returncode != 0:
        msg = _last_line(proc.stderr) if proc.stderr.strip() else _last_line(proc.stdout)
        _tool_failed(f"{path}: {args[0]} failed (exit {proc.returncode}): {msg}", proc.stdout + proc.stderr)
    return proc


def _tool_failed(message: str, output: str) -> None:
    """A tool's failure in the vocabulary: a full file system passes once space is freed."""
    if "No space left on device" in output or "Disk quota exceeded" in output:
        raise TemporaryError(message)
    raise PermanentError(message)


def _debugfs(image: Path, cmds: list[str], write: bool = False, allow: str = "") -> str:
    """Runs debugfs commands; it exits 0 even when a command fails, so stderr decides."""
    proc = _run(["debugfs", *(["-w"] if write else []), "-f", "-", str(image)], image, "\n".join(cmds) + "\n")
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _BANNER.match(ln)]
    errors = [ln for ln in errors if not (allow and allow in ln)]
    if errors:
        _tool_failed(f"{image}: debugfs failed: {errors[0].strip()}", proc.stderr)  # the first is the cause
    return proc.stdout


def _q(path: str | os.PathLike[str]) -> str:
    s = os.fspath(path)
    if '"' in s or "\n" in s:
        raise PermanentError(f"{s!r}: path not supported by debugfs")
    return f'"{s}"'


def _check_size(size: int, path: Path) -> None:
    if size <= 0 or size % BLOCK:
        raise PermanentError(f"{path}: size {size} is not a positive multiple of {BLOCK}")


def _read(path: Path, offset: int, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)
    except OSError as e:
        raise os_error(f"{path}: cannot read", e) from e


def disk_format(path: Path) -> DiskFormat:
    """qcow2 if the file starts with the qcow2 magic, else raw."""
    return DiskFormat.QCOW2 if _read(path, 0, 4) == QCOW2_MAGIC else DiskFormat.RAW


def virtual_size(path: Path) -> int:
    """Size the guest sees: the file size, or the qcow2 header's size field."""
    if disk_format(path) is DiskFormat.QCOW2:
        return int(struct.unpack(">Q", _read(path, 24, 8))[0])
    return path.stat().st_size


def is_ext4(path: Path) -> bool:
    """True if a raw file holds an ext2/3/4 superblock (a qcow2 overlay does not)."""
    try:
        magic = _read(path, SUPERBLOCK + 56, 2)
    except WarmvmError:
        return False
    return len(magic) == 2 and struct.unpack("<H", magic)[0] == EXT4_MAGIC


def ext4_info(image: Path) -> Ext4Info:
    """Geometry from the superblock of a raw image, without a subprocess."""
    sb = _read(image, SUPERBLOCK, 1024)
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
def _removed_on_failure(path: Path, what: str) -> Iterator[None]:
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
    _check_size(size, out)
    if len(label.encode()) > 16:
        raise PermanentError(f"{out}: label {label!r} longer than 16 bytes")
    entries = _tree_stats(src_dir)[1] if src_dir is not None else 0
    args = ["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-m", "0",
            "-N", str(_inode_count(size, entries)), "-E", "lazy_itable_init=1,lazy_journal_init=1"]
    args += ["-L", label] if label else []
    args += ["-d", str(src_dir)] if src_dir is not None else []
    with _removed_on_failure(out, "cannot create"):
        with open(out, "wb") as f:
            f.truncate(size)
        _run([*args, str(out)], out)
        if src_dir is not None:
            _copy_root_attrs(out, src_dir)


def _copy_root_attrs(image: Path, src_dir: Path) -> None:
    # mke2fs -d copies every entry's mode and owner except the root directory's.
    st = src_dir.stat()
    if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (0o755, 0, 0):
        _debugfs(image, [f"sif / mode 0{0o40000 | st.st_mode & 0o7777:o}",
                         f"sif / uid {st.st_uid}", f"sif / gid {st.st_gid}"], write=True)


def _types(image: Path, paths: list[str]) -> dict[str, str | None]:
    """Inode type ("directory", "regular", ...) of each path, None if missing."""
    out = _debugfs(image, [f"stat {_q(p)}" for p in paths], allow=_NOT_FOUND)
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
        _debugfs(image, [f"rdump {_q(path)} {_q(stage)}"])
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
        out = _debugfs(image, [f"ls -p {_q(d)}" for d in level])
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
            cmds += [f"mkdir {_q(d)}", f"sif {_q(d)} mode 040700", f"sif {_q(d)} uid {uid}", f"sif {_q(d)} gid {gid}"]
        elif kinds[d] != "directory":
            raise PermanentError(f"{image}: {d} exists and is not a directory")
    if kinds[str(target)] not in (None, "regular"):
        raise PermanentError(f"{image}: {target} exists and is not a regular file")
    if kinds[str(target)] == "regular":
        cmds.append(f"rm {_q(target)}")
    with tempfile.NamedTemporaryFile(dir=image.parent, prefix=f".{image.name}.inject-") as tmp:
        tmp.write(data)
        tmp.flush()
        cmds += [f"write {_q(tmp.name)} {_q(target)}", f"sif {_q(target)} mode 0{0o100000 | mode & 0o7777:o}",
                 f"sif {_q(target)} uid {uid}", f"sif {_q(target)} gid {gid}"]
        _debugfs(image, cmds, write=True)


def detect_clone_methods(directory: Path) -> list[CloneMethod]:
    """Clone methods that work for files in directory, best first (probes FICLONE for real)."""
    methods = [CloneMethod.REFLINK] if _reflink_works(directory) else []
    if shutil.which("qemu-img", path=_env().get("PATH")):
        methods.append(CloneMethod.QCOW2)
    return [*methods, CloneMethod.SPARSE]


def _reflink_works(directory: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".reflink-probe-")
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
    with _removed_on_failure(dest, f"{method.value} clone of {src} failed"):
        if method is CloneMethod.REFLINK:
            with open(src, "rb") as s, open(dest, "wb") as d:
                fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        elif method is CloneMethod.QCOW2:
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(src.resolve()), "-F", "raw",
                  str(dest), str(size)], dest)
        else:  # coreutils 9 reflinks by default: force a real copy
            _run(["cp", "--reflink=never", "--sparse=always", str(src), str(dest)], dest)


def _resize(image: Path) -> None:
    """Grows the ext4 in image to the file's size, checking it first if resize2fs demands."""
    try:
        _run(["resize2fs", str(image)], image)
    except PermanentError as e:
        if "Please run 'e2fsck -f" not in str(e):
            raise
        proc = subprocess.run(["e2fsck", "-fp", str(image)], capture_output=True, text=True, env=_env(), check=False)
        if proc.returncode not in (0, 1):
            raise PermanentError(f"{image}: e2fsck -fp failed (exit {proc.returncode}): "
                            f"{_last_line(proc.stdout + proc.stderr)}") from e
        _run(["resize2fs", str(image)], image)


def grow(disk: Path, size: int, fmt: DiskFormat = DiskFormat.RAW) -> None:
    """Grows disk and its ext4 to size; a qcow2 overlay becomes a raw file. The VM must be stopped.

    `fmt` is the format warmvm recorded for the disk: never guessed from the content, which the
    guest writes (a raw disk whose guest wrote a qcow2 header would otherwise name any host file
    as its backing file)."""
    _check_size(size, disk)
    current = virtual_size(disk) if fmt is DiskFormat.QCOW2 else _file_size(disk)
    if size < current:
        raise PermanentError(f"{disk}: shrinking from {current} to {size} bytes is refused")
    if fmt is DiskFormat.QCOW2:
        if size > current:
            with replacing(disk, disk.parent) as tmp:
                _run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(disk), str(tmp)], disk)
                _grow_raw(tmp, size)
        return
    _grow_raw(disk, size)


def _grow_raw(disk: Path, size: int) -> None:
    if _file_size(disk) < size:
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
    listing = _run(["dumpe2fs", str(disk)], disk).stdout
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
        _debugfs(disk, cmds, write=True)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise os_error(f"{path}: cannot stat", e) from e


@contextlib.contextmanager
def _as_raw(disk: Path) -> Iterator[Path]:
    """Yields disk itself if raw, else a temporary raw flattening of the qcow2 overlay."""
    if disk_format(disk) is DiskFormat.RAW:
        yield disk
        return
    with tempfile.TemporaryDirectory(prefix="warmvm-flat-") as d:
        raw = Path(d) / "disk.raw"
        _run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], disk)
        yield raw


def fsck(disk: Path) -> None:
    """Raises PermanentError unless e2fsck -fn finds the ext4 in disk (raw or qcow2) clean."""
    with _as_raw(disk) as raw:
        try:
            _run(["e2fsck", "-fn", str(raw)], disk)
        except WarmvmError as e:
            raise type(e)(str(e).replace(str(raw), str(disk))) from e


def read_dir_tree(root: Path) -> Tree:
    """The Tree of a host directory, to compare with read_tree()."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            p = base / name
            key = p.relative_to(root).as_posix()
            if p.is_symlink():
                tree[key] = os.readlink(p)
            elif p.is_dir():
                tree[key] = None
            else:
                tree[key] = p.read_bytes()
    return tree


def read_tree(disk: Path) -> Tree:
    """All files of the ext4 in disk (raw or qcow2), without lost+found; for tests and checks."""
    with _as_raw(disk) as raw, tempfile.TemporaryDirectory(prefix="warmvm-tree-") as d:
        extract_dir(raw, "/", Path(d) / "t")
        tree = read_dir_tree(Path(d) / "t")
    return {k: v for k, v in tree.items() if k != "lost+found" and not k.startswith("lost+found/")}
