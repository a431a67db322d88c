"""Reads seeds, work disks (with the blocks each takes), the state's file system and image files into
the disk domain's observed state.

A seed's fingerprint covers what it is built from (the rootfs or source
directory, as stat data), the public key injected into it, its size and the
seed format, so any change to them means a new seed. `ImageFiles` is the
probe spec loading is given for the checks it makes of an image's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from ..adapters import ext4
from ..base.errors import WarmvmError
from ..base.kinds import Ref
from ..base.model import Image
from ..statedir.layout import SEED, Layout
from ..statedir.store import read_json
from .state import DiskRecord, DiskState, ImageState, SeedFiles, SeedRecord, StateSpace

SEED_FORMAT = 1


def fingerprint(image: Image, pubkey: str) -> str | None:
    if image.seed is None:
        return None
    parts: list[object] = [SEED_FORMAT, image.seed.size, pubkey]
    if image.seed.from_rootfs is not None:
        st = image.rootfs.stat()
        parts += ["rootfs", str(image.rootfs), image.seed.from_rootfs, st.st_size, st.st_mtime_ns, st.st_ino]
    else:
        assert image.seed.from_dir is not None
        parts += ["dir", str(image.seed.from_dir), _tree_stat(image.seed.from_dir)]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _tree_stat(root: Path) -> list[tuple[str, int, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns, st.st_mode))
    return out


def observe_images(layout: Layout, images: dict[str, Image], pubkey: str) -> dict[str, ImageState]:
    """Every image with a spec or a directory in the state (a removed image's seeds linger until freed)."""
    names = set(images)
    if layout.images.is_dir():
        names |= {p.name for p in layout.images.iterdir() if p.is_dir()}
    out = {}
    for name in sorted(names):
        image = images.get(name)
        inputs = fingerprint(image, pubkey) if image else None
        out[name] = ImageState(name, inputs, _seed_files(layout.image_dir(name)), _failures(layout.seed_record(name)))
    return out


def _seed_files(directory: Path) -> dict[str, SeedFiles]:
    bases: dict[str, os.stat_result] = {}
    sized: dict[str, dict[int, Path]] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    for entry in entries:
        m = SEED.match(entry.name)
        if not m:
            continue
        if m.group(2):
            sized.setdefault(m.group(1), {})[int(m.group(2))] = Path(entry.path)
        else:
            bases[m.group(1)] = entry.stat()
    seeds = {fp: SeedFiles(directory / f"seed-{fp}.ext4", st.st_size, st.st_mtime, sized.get(fp, {}))
             for fp, st in bases.items()}
    for fp in sized.keys() - bases.keys():  # the base went: its sized seeds are still listed, to be freed
        seeds[fp] = SeedFiles(None, 0, 0.0, sized[fp])
    return seeds


def _failures(path: Path) -> dict[str, str]:
    data = read_json(path)
    record = SeedRecord.from_dict(data, str(path)) if data is not None else None
    return {record.fingerprint: record.error} if record is not None and record.error else {}


def read_disk_record(path: Path) -> DiskRecord | None:
    data = read_json(path)
    return DiskRecord.from_dict(data, str(path)) if data is not None else None


def observe_disks(layout: Layout, broken: dict[str, str]) -> dict[str, DiskState]:
    """Every finished work disk; one whose record cannot be read goes into `broken` instead."""
    out = {}
    for vm_dir in sorted(layout.vms.iterdir()) if layout.vms.is_dir() else []:
        files = layout.vm(vm_dir.name)
        try:
            record = read_disk_record(files.disk_record)
        except WarmvmError as e:
            broken[str(Ref.vm(vm_dir.name))] = str(e)
            continue
        if record is None:
            continue  # a disk without its record was never finished: it is rebuilt
        try:
            allocated = files.disk.stat().st_blocks * 512
        except FileNotFoundError:
            continue  # nor is a record without its disk
        seed = layout.resolve(record.seed) if record.seed else None
        out[vm_dir.name] = DiskState(vm_dir.name, files.disk, record, seed, allocated)
    return out


def observe_space(root: Path) -> StateSpace:
    """The file system the state directory is on (or will be: its nearest existing parent's)."""
    while not root.exists() and root != root.parent:
        root = root.parent
    fs = os.statvfs(root)
    return StateSpace(size=fs.f_blocks * fs.f_frsize, free=fs.f_bavail * fs.f_frsize)


class ImageFiles:
    """The checks spec loading makes of an image's files, done on the real files."""

    def is_file(self, path: Path) -> bool:
        return path.is_file()

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def is_kernel(self, path: Path) -> bool:
        return kernel_format(path) is not None

    def is_ext4(self, path: Path) -> bool:
        return ext4.is_ext4(path)

    def has_dir(self, rootfs: Path, inner: str) -> bool:
        try:
            return ext4.ext4_has_dir(rootfs, inner)
        except WarmvmError:
            return False


def kernel_format(path: Path) -> str | None:
    """"bzImage" (the boot protocol's "HdrS" magic at 0x202), "PVH ELF" (a kernel ELF with a PVH entry,
    which microvm boots directly: no real-mode setup, no decompression), or None: not a kernel."""
    try:
        with open(path, "rb") as f:
            f.seek(0x202)
            if f.read(4) == b"HdrS":
                return "bzImage"
    except OSError:
        return None
    return "PVH ELF" if pvh_entry(path) is not None else None


XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4


def pvh_entry(path: Path) -> int | None:
    """The PVH entry point of a 64-bit kernel ELF (its Xen note of type 18), or None. Reads only the
    headers and the note segments, not the whole (50 MB) file."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:5] != b"\x7fELF\x02" or len(head) < 64:
                return None
            phoff = struct.unpack_from("<Q", head, 0x20)[0]
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * min(phnum, 64))
            for i in range(len(table) // phentsize):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                if p_type == PT_NOTE:
                    f.seek(p_offset)
                    entry = _pvh_note(f.read(min(p_filesz, 1 << 16)))
                    if entry is not None:
                        return entry
    except (OSError, struct.error):
        return None
    return None


def _pvh_note(notes: bytes) -> int | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        desc = pos + 12 + ((namesz + 3) & ~3)
        if notes[pos + 12: pos + 12 + namesz].rstrip(b"\0") == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY \
                and desc + 4 <= len(notes):
            return int(struct.unpack_from("<I", notes, desc)[0])
        pos = desc + ((descsz + 3) & ~3)
    return None
