"""The disk driver: seed and work-disk actions, and the records that go with them.

Every file is built under state/tmp and renamed into place only when complete
(and, for seeds, checked with e2fsck), so a kill at any moment leaves either
nothing or a finished file. The record of a disk is written after its file:
a disk without a record is never used, only rebuilt. The file work itself is
in ext4.py.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path

from ..adapters import ext4
from ..base.actions import Details, Handlers
from ..base.errors import PermanentError, TemporaryError
from ..base.kinds import CloneMethod, Taken
from ..base.model import Image
from ..statedir.layout import Layout
from ..statedir.store import replacing, scratch_prefix, write_json
from .actions import DiskClone, DiskDelete, DiskGrow, DiskScratch, SeedDelete, SeedGenerate, SeedSize
from .observe import read_disk_record
from .plan import seed_size_for
from .state import DiskRecord, SeedRecord

AUTHORIZED_KEYS = "/.ssh/authorized_keys"  # the work disk is the guest's /root
MiB = 1 << 20

Progress = Callable[[str], AbstractContextManager[object]]


class DiskDriver:
    def __init__(self, layout: Layout, pubkey: str, reflink: bool, progress: Progress | None = None) -> None:
        self.layout = layout
        self.pubkey = pubkey
        self.reflink = reflink  # whether the state directory clones by reflink (probed once, by the host)
        self.progress = progress

    def handlers(self) -> Handlers:
        return {SeedGenerate: self.seed_generate, SeedSize: self.seed_size, SeedDelete: self.seed_delete,
                DiskClone: self.disk_clone, DiskScratch: self.disk_scratch, DiskGrow: self.disk_grow,
                DiskDelete: self.disk_delete}

    def prepare(self, observed: object) -> None:
        pass

    def close(self) -> None:
        pass

    # --- seeds -----------------------------------------------------------------

    def seed_generate(self, a: SeedGenerate) -> Details:
        record = self.layout.seed_record(a.image.name)
        try:
            with self._root_of(a.image) as src:
                content = ext4.content_size(src)
                size = a.image.seed.size if a.image.seed and a.image.seed.size else seed_size_for(content)
                with self._busy(f"generating work seed for image {a.image.name} ({content / MiB:.0f} MiB)"):
                    self._build(self.layout.seed(a.image.name, a.fingerprint), size, src, check=True)
        except TemporaryError:
            raise  # e.g. a full file system: tried again, and the image is not marked as failed
        except PermanentError as e:
            write_json(record, SeedRecord(fingerprint=a.fingerprint, error=str(e), time=time.time()).to_dict(),
                       self.layout.tmp)
            raise PermanentError(f"seed not built, VMs take the slow path: {e}") from None
        write_json(record, SeedRecord(fingerprint=a.fingerprint, error=None, time=time.time(), size=size).to_dict(),
                   self.layout.tmp)
        return {"size": size, "content": content}

    def seed_size(self, a: SeedSize) -> Details:
        base = self.layout.seed(a.image.name, a.fingerprint)
        with self._building(self.layout.seed(a.image.name, a.fingerprint, a.size)) as tmp:
            # a sized seed must stay raw (qcow2 overlays are backed by it): reflink, or a real copy
            method = CloneMethod.REFLINK if self.reflink else CloneMethod.SPARSE
            ext4.clone(base, tmp, method, ext4.virtual_size(base))
            ext4.grow(tmp, a.size)
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
        files = self.layout.vm(a.vm)
        with self._building(files.disk) as tmp:
            ext4.clone(seed, tmp, a.method, a.size)
        backing = self.layout.relative(seed) if a.method == CloneMethod.QCOW2 else None
        taken = Taken.from_seed(a.method)
        self._record(a.vm, DiskRecord(image=a.image.name, size=a.size, taken=taken, format=a.format, seed=backing,
                                      created=time.time()))
        return {"path": taken, "size": a.size}

    def disk_scratch(self, a: DiskScratch) -> Details:
        with self._root_of(a.image) as src:
            self._build(self.layout.vm(a.vm).disk, a.size, src, check=False)
        self._record(a.vm, DiskRecord(image=a.image.name, size=a.size, taken=Taken.SCRATCH, format=a.format,
                                      seed=None, created=time.time()))
        return {"path": Taken.SCRATCH, "size": a.size}

    def disk_grow(self, a: DiskGrow) -> Details:
        files = self.layout.vm(a.vm)
        record = read_disk_record(files.disk_record)
        if record is None:
            raise TemporaryError(f"vm/{a.vm}: its work disk is not recorded")
        ext4.grow(files.disk, a.size, record.format)
        # a grown qcow2 overlay was flattened: raw from now on, backed by nothing
        self._record(a.vm, replace(record, size=a.size, format=a.format, seed=None))
        return {"size": a.size}

    def disk_delete(self, a: DiskDelete) -> Details:
        files = self.layout.vm(a.vm)
        files.disk.unlink(missing_ok=True)  # the file first: a record without it means "no disk"
        files.disk_record.unlink(missing_ok=True)
        return {}

    # --- helpers -------------------------------------------------------------

    def _build(self, dest: Path, size: int, src: Path, check: bool) -> None:
        with self._building(dest) as tmp:
            ext4.build_ext4(tmp, size, src, label="warmvm-work")
            ext4.inject_file(tmp, AUTHORIZED_KEYS, (self.pubkey + "\n").encode(), 0o600)
            if check:
                ext4.fsck(tmp)

    @contextmanager
    def _building(self, dest: Path) -> Iterator[Path]:
        """A temporary file in the state's tmp area, renamed to dest only if the block succeeds."""
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with replacing(dest, self.layout.tmp) as tmp:
            yield tmp

    @contextmanager
    def _root_of(self, image: Image) -> Iterator[Path]:
        """The directory holding the image's /root contents (read out of the rootfs if need be)."""
        seed = image.seed
        if seed is not None and seed.from_dir is not None:
            yield seed.from_dir
            return
        inner = seed.from_rootfs if seed is not None and seed.from_rootfs else "/root"
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=self.layout.tmp, prefix=scratch_prefix(f"root-{image.name}")))
        try:
            ext4.extract_dir(image.rootfs, inner, stage / "root")
            yield stage / "root"
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _record(self, vm: str, record: DiskRecord) -> None:
        write_json(self.layout.vm(vm).disk_record, record.to_dict(), self.layout.tmp)

    @contextmanager
    def _busy(self, label: str) -> Iterator[None]:
        if self.progress is None:
            yield
        else:
            with self.progress(label):
                yield
