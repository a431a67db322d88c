"""The snapshot driver: a template VM booted, saved, recorded; snapshots freed.

The template runs the image's own boot in the snapshot layout (qemu.py): an
empty work disk and a TAP of its own that is attached to nothing, and its
guest stops before it takes any identity (its /sbin/init with
warmvm.template=1). Once it says so on its console, QEMU pauses it and
writes its state into a file of the tmp area, which is renamed into place
when complete; the record, with the file's digest, follows it. Nothing of
the template outlives the action: its QEMU is killed, its directory removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from ..adapters import qemu, tun
from ..adapters.ssh import READY
from ..base import uids
from ..base.actions import Details, Handlers
from ..base.errors import PermanentError
from ..statedir.layout import TEMPLATE_DIR, Layout, VmFiles
from ..statedir.store import read_json, replacing, scratch_prefix, sha256, write_json
from .actions import SnapshotDelete, SnapshotGenerate
from .state import SnapshotRecord

POINT = b"warmvm: snapshot point"
TEMPLATE_DISK = 16 << 20  # the template's work disk: probed, then let go by its guest before the save
SAVE_TIMEOUT = 120.0


class SnapshotDriver:
    def __init__(self, layout: Layout, instance: str, boot_timeout: float = 60.0) -> None:
        self.layout = layout
        self.instance = instance  # whose uid block its templates run in
        self.boot_timeout = boot_timeout

    def handlers(self) -> Handlers:
        return {SnapshotGenerate: self.snapshot_generate, SnapshotDelete: self.snapshot_delete}

    def prepare(self, observed: object) -> None:
        pass

    def close(self) -> None:
        pass

    def snapshot_generate(self, a: SnapshotGenerate) -> Details:
        started = time.monotonic()
        state, record_file = self.layout.snapshot(a.image.name, a.fingerprint)
        state.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.layout.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.layout.tmp, prefix=scratch_prefix(TEMPLATE_DIR)))
        try:
            with replacing(state, self.layout.tmp) as out:
                version = self._save(a, work, out)
                size, digest = os.stat(out).st_size, sha256(out)
        except PermanentError as e:
            failures = read_json(self.layout.snapshot_failures(a.image.name)) or {}
            write_json(self.layout.snapshot_failures(a.image.name), failures | {a.fingerprint: str(e)},
                       self.layout.tmp)
            raise PermanentError(f"no snapshot, VMs of {a.shape} boot cold: {e}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        elapsed = (time.monotonic() - started) * 1000
        record = SnapshotRecord(image=a.image.name, fingerprint=a.fingerprint, memory=a.shape.memory,
                                vcpus=a.shape.vcpus, accel=a.accel, tsc_khz=a.tsc_khz, size=size, sha256=digest,
                                generate_ms=round(elapsed, 1), created=time.time(), qemu=version)
        write_json(record_file, record.to_dict(), self.layout.tmp)
        return {"shape": str(a.shape), "size": size, "generate_ms": round(elapsed, 1)}

    def _save(self, a: SnapshotGenerate, work: Path, out: Path) -> str:
        """Boots the template to its snapshot point and saves it into `out`; the QEMU version."""
        files = VmFiles(work)
        disk, identity = work / "work.img", work / "identity"
        with open(disk, "wb") as f:
            f.truncate(TEMPLATE_DISK)
        identity.write_bytes(qemu.TEMPLATE_IDENTITY)
        tap = tun.transient_tap()
        try:
            machine = qemu.template(a.image, vcpus=a.shape.vcpus, memory=a.shape.memory, accel=a.accel,
                                    tsc_khz=a.tsc_khz, work=disk, identity=identity, tap=tap,
                                    uid=uids.template_uid(self.instance))
            pid = qemu.start(machine, files)
        finally:
            os.close(tap)
        try:
            self._await_point(files, pid)
            fd = os.open(out, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                with qemu.connect(files, pid, 5.0) as session:
                    qemu.save_state(session, fd, SAVE_TIMEOUT)
                    v = session.run("query-version")
                os.fsync(fd)
            except OSError as e:
                raise PermanentError(f"saving the template: {e}") from None
            finally:
                os.close(fd)
            return f"{v['qemu']['major']}.{v['qemu']['minor']}.{v['qemu']['micro']} {v.get('package', '')}".strip()
        finally:
            qemu.kill_spawned(pid)

    def _await_point(self, files: VmFiles, pid: int) -> None:
        """Until the template's guest waits for its identity. One that boots on (its init knows no
        templates) or never gets there fails for good: tried again only when the inputs change."""
        deadline = time.monotonic() + self.boot_timeout
        while POINT not in (console := qemu.console.end(files)):  # bounded by its drainer, as a VM's
            if qemu.exited(pid):
                why = qemu.failure_reason(files) or qemu.console.tail(files, 1) or "no message"
                raise PermanentError(f"the template's QEMU exited: {why}")
            if READY in console:
                raise PermanentError("the image's init booted the template through (it does not stop for "
                                     "warmvm.template=1): this image cannot be snapshotted")
            if time.monotonic() > deadline:
                raise PermanentError(f"the template did not reach its snapshot point within {self.boot_timeout:g}s")
            time.sleep(0.02)

    def snapshot_delete(self, a: SnapshotDelete) -> Details:
        for path in a.files:
            path.unlink(missing_ok=True)
        failures = self.layout.snapshot_failures(a.image)
        known = read_json(failures) or {}
        if a.fingerprint in known:
            write_json(failures, {k: v for k, v in known.items() if k != a.fingerprint}, self.layout.tmp)
        directory = failures.parent
        if directory.is_dir() and not any(p.suffix in (".bin", ".json") and p != failures for p in directory.iterdir()):
            shutil.rmtree(directory)
        return {"files": len(a.files)}


