"""Reads the snapshots on disk, and the fingerprint of the inputs each wanted snapshot has today.

The fingerprint covers what a restored guest is made of and what it is
restored into: the template's whole QEMU command line (with placeholders for
per-run paths, so any change to the device layout or the kernel command line
is a new snapshot), the kernel, initrd and rootfs files (stat data) and the
QEMU binary. Nothing here reads a state file's content.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..adapters import qemu
from ..base.errors import WarmvmError
from ..base.model import Desired, HostCaps, Image
from ..statedir.layout import SNAPSHOT, Layout, VmFiles
from ..statedir.store import read_json
from .plan import wanted_shapes
from .state import FORMAT, Shape, Snapshot, SnapshotFiles, SnapshotRecord, Snapshots


def fingerprint(image: Image, shape: Shape, host: HostCaps) -> str | None:
    accel = host.accel(shape.accel)
    if accel is None:
        return None  # kvm asked for where there is none: such a VM does not start at all
    machine = qemu.template(image, vcpus=shape.vcpus, memory=shape.memory, accel=accel, tsc_khz=None,
                            work=Path("WORK"), identity=Path("IDENTITY"), tap="TAP")
    parts: list[object] = [FORMAT, qemu.qemu_argv(machine, VmFiles(Path("DIR")))]
    for path in (image.kernel, image.initrd, image.rootfs, host.qemu):
        if path is not None:
            try:
                st = os.stat(path)
            except OSError:
                return None  # a missing file: the spec check reports it
            parts.append([str(path), st.st_size, st.st_mtime_ns, st.st_ino])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def observe_snapshots(layout: Layout, desired: Desired, host: HostCaps) -> Snapshots:
    wanted = {(name, shape): fingerprint(desired.images[name], shape, host)
              for name, shape in sorted(wanted_shapes(desired)) if name in desired.images}
    on_disk: dict[tuple[str, str], SnapshotFiles] = {}
    failed: dict[tuple[str, str], str] = {}
    for directory in sorted(layout.snapshots.iterdir()) if layout.snapshots.is_dir() else []:
        found: dict[str, list[Path]] = {}
        for path in sorted(directory.iterdir()):
            m = SNAPSHOT.match(path.name)
            if m:
                found.setdefault(m.group(1), []).append(path)
        for fp, paths in found.items():
            on_disk[(directory.name, fp)] = _files(layout, directory.name, fp, tuple(paths))
        for fp, why in (read_json(layout.snapshot_failures(directory.name)) or {}).items():
            failed[(directory.name, str(fp))] = str(why)
    return Snapshots(wanted, on_disk, failed)


def _files(layout: Layout, image: str, fp: str, paths: tuple[Path, ...]) -> SnapshotFiles:
    """The snapshot, if its record reads and its state file is there with the recorded size."""
    state, record_file = layout.snapshot(image, fp)
    try:
        data = read_json(record_file)
        record = SnapshotRecord.from_dict(data, str(record_file)) if data is not None else None
        st = os.lstat(state)
    except (WarmvmError, OSError):
        return SnapshotFiles(image, fp, paths, None)
    if record is None or record.image != image or record.fingerprint != fp or record.size != st.st_size:
        return SnapshotFiles(image, fp, paths, None)
    return SnapshotFiles(image, fp, paths, Snapshot(state, record))
