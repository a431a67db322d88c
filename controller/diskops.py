"""Applying seed and work-disk actions: the disk driver plus the records that go with it.

Every file is built under state/tmp and renamed into place only when complete
(and, for seeds, checked with e2fsck), so a kill at any moment leaves either
nothing or a finished file. The record of a disk is written after its file:
a disk without a record is never used, only rebuilt.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import disks
from .actions import DiskClone, DiskDelete, DiskGrow, DiskScratch, SeedDelete, SeedGenerate, SeedSize
from .errors import PermanentError, TemporaryError
from .layout import Layout
from .model import Image
from .store import fsync_dir, read_json, write_json

AUTHORIZED_KEYS = "/.ssh/authorized_keys"  # the work disk is the guest's /root
MiB = 1 << 20

Details = dict[str, Any]
Progress = Callable[[str], Any]


class DiskOps:
    def __init__(self, layout: Layout, pubkey: str, reflink: bool, progress: Progress | None = None) -> None:
        self.layout = layout
        self.pubkey = pubkey
        self.reflink = reflink  # whether the state directory clones by reflink (probed once, by the host)
        self.progress = progress

    # --- seeds -----------------------------------------------------------------

    def seed_generate(self, a: SeedGenerate) -> Details:
        record = self.layout.seed_record(a.image.name)
        try:
            with self._root_of(a.image) as src:
                content = disks.content_size(src)
                size = a.image.seed.size if a.image.seed and a.image.seed.size else seed_size_for(content)
                with self._busy(f"generating work seed for image {a.image.name} ({content / MiB:.0f} MiB)"):
                    self._build(self.layout.seed(a.image.name, a.fingerprint), size, src, check=True)
        except disks.DiskError as e:
            write_json(record, {"fingerprint": a.fingerprint, "error": str(e), "time": time.time()})
            raise PermanentError(f"seed not built, VMs take the slow path: {e}") from None
        write_json(record, {"fingerprint": a.fingerprint, "error": None, "time": time.time(), "size": size})
        return {"size": size, "content": content}

    def seed_size(self, a: SeedSize) -> Details:
        base = self.layout.seed(a.image.name, a.fingerprint)
        with self._building(self.layout.seed(a.image.name, a.fingerprint, a.size)) as tmp:
            # a sized seed must stay raw (qcow2 overlays are backed by it): reflink, or a real copy
            method = disks.CloneMethod.REFLINK if self.reflink else disks.CloneMethod.SPARSE
            self._disk_call(lambda: disks.clone(base, tmp, method, disks.virtual_size(base)))
            self._disk_call(lambda: disks.grow(tmp, a.size))
        return {"size": a.size, "method": method.value}

    def seed_delete(self, a: SeedDelete) -> Details:
        for path in a.files:
            path.unlink(missing_ok=True)
        directory = self.layout.image_dir(a.image)
        if directory.is_dir() and not any(p.suffix == ".ext4" for p in directory.iterdir()):
            shutil.rmtree(directory)
        return {"files": len(a.files)}

    # --- work disks --------------------------------------------------------------

    def disk_clone(self, a: DiskClone) -> Details:
        seed = self.layout.seed(a.image.name, a.fingerprint, a.size)
        method = disks.CloneMethod(a.method)
        path = self.layout.disk(a.vm)
        with self._building(path) as tmp:
            self._disk_call(lambda: disks.clone(seed, tmp, method, a.size))
        backing = seed if method is disks.CloneMethod.QCOW2 else None
        self._record(a.vm, a.image.name, path, a.size, f"seed:{method.value}", backing)
        return {"path": f"seed:{method.value}", "size": a.size}

    def disk_scratch(self, a: DiskScratch) -> Details:
        path = self.layout.disk(a.vm)
        with self._root_of(a.image) as src:
            try:
                self._build(path, a.size, src, check=False)
            except disks.DiskError as e:
                raise PermanentError(str(e)) from None
        self._record(a.vm, a.image.name, path, a.size, "scratch", None)
        return {"path": "scratch", "size": a.size}

    def disk_grow(self, a: DiskGrow) -> Details:
        record = read_json(self.layout.disk_record(a.vm))
        if record is None:
            raise TemporaryError(f"vm/{a.vm}: its work disk is not recorded")
        self._disk_call(lambda: disks.grow(Path(record["path"]), a.size))
        record.update(size=a.size, seed=None if disks.disk_format(Path(record["path"])) is disks.DiskFormat.RAW
                      else record.get("seed"))
        write_json(self.layout.disk_record(a.vm), record)
        return {"size": a.size}

    def disk_delete(self, a: DiskDelete) -> Details:
        self.layout.disk(a.vm).unlink(missing_ok=True)  # the file first: a record without it means "no disk"
        self.layout.disk_record(a.vm).unlink(missing_ok=True)
        return {}

    # --- helpers -------------------------------------------------------------

    def _build(self, dest: Path, size: int, src: Path, check: bool) -> None:
        with self._building(dest) as tmp:
            disks.build_ext4(tmp, size, src, label="warmvm-work")
            disks.inject_file(tmp, AUTHORIZED_KEYS, (self.pubkey + "\n").encode(), 0o600)
            if check:
                disks.fsck(tmp)

    @contextmanager
    def _building(self, dest: Path) -> Iterator[Path]:
        """A temporary file on the state's file system, renamed to dest only if the block succeeds."""
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.layout.tmp, prefix=f"{dest.name}.")
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def _root_of(self, image: Image) -> Iterator[Path]:
        """The directory holding the image's /root contents (read out of the rootfs if need be)."""
        seed = image.seed
        if seed is not None and seed.from_dir is not None:
            yield seed.from_dir
            return
        inner = seed.from_rootfs if seed is not None and seed.from_rootfs else "/root"
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=self.layout.tmp, prefix=f"root-{image.name}."))
        try:
            disks.extract_dir(image.rootfs, inner, stage / "root")
            yield stage / "root"
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _record(self, vm: str, image: str, path: Path, size: int, taken: str, seed: Path | None) -> None:
        write_json(self.layout.disk_record(vm), {"image": image, "path": str(path), "size": size, "taken": taken,
                                                  "seed": str(seed) if seed else None, "created": time.time()})

    @contextmanager
    def _busy(self, label: str) -> Iterator[None]:
        if self.progress is None:
            yield
        else:
            with self.progress(label):
                yield

    @staticmethod
    def _disk_call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except disks.DiskError as e:
            raise PermanentError(str(e)) from None


def seed_size_for(content: int) -> int:
    """A base seed's size: the content plus a fifth and 16 MiB of room, in whole MiB."""
    return -(-(content + content // 5 + 16 * MiB) // MiB) * MiB


def clean_tmp(layout: Layout) -> None:
    """Leftovers of a killed run (we hold the lock, so nothing else is building)."""
    if layout.tmp.is_dir():
        shutil.rmtree(layout.tmp)
