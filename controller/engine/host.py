"""The host as a command sees it: its state directory, its capabilities, and the observers and
drivers of every domain, put together.

`open_host` builds what `plan` and `reconcile` need from the state directory,
so the CLI (and the bench) stay thin; with `prepare` it makes the state the
reconciler writes to (directory, key pair, tmp area), and is called only
under the lock; plan never writes anything. This is the one module that knows
every domain's observer and driver.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import ext4, qemu, ssh
from ..base.errors import PermanentError, WarmvmError, os_error
from ..base.kinds import CloneMethod
from ..base.model import Desired, HostCaps
from ..disks.observe import ImageFiles, observe_disks, observe_images, observe_space
from ..network.observe import observe_net
from ..snapshots.observe import observe_snapshots
from ..statedir.layout import TEMPLATE_DIR, Layout, VmFiles
from ..statedir.store import Store, scratch_prefix, writer_alive
from ..vms.observe import observe_trash, observe_vms
from .state import Observed

if TYPE_CHECKING:
    from ..disks.driver import Progress
    from .apply import Drivers

__all__ = ["Host", "ImageFiles", "open_host"]


@dataclass
class Host:
    layout: Layout
    instance: str | None  # this state directory's identity (None until the first reconcile makes it)
    pubkey: str
    clone_method: CloneMethod  # what this run clones seeds with: the best available, or the one asked
    clone_methods: tuple[CloneMethod, ...] = (CloneMethod.SPARSE,)  # what the state directory supports
    boot_timeout: float = 60.0
    write: bool = False  # this run may write the state directory (it holds the lock)

    @property
    def reflink(self) -> bool:
        return CloneMethod.REFLINK in self.clone_methods

    def observer(self, desired: Desired) -> Callable[[], Observed]:
        return lambda: self.observe(desired)

    def caps(self) -> HostCaps:
        """What this host can do, once per pass: KVM (probed once per host boot), the TSC rate and QEMU.
        (How it clones seeds was probed when the host was opened: `clone_method`.)"""
        return HostCaps(kvm=qemu.kvm_usable_cached(self.layout, self.write), tsc_khz=qemu.host_tsc_khz(),
                        qemu=shutil.which(qemu.QEMU))

    def observe(self, desired: Desired) -> Observed:
        broken: dict[str, str] = {}
        try:
            caps = self.caps()
            return Observed(net=observe_net(self.instance),
                            images=observe_images(self.layout, desired.images, self.pubkey),
                            disks=observe_disks(self.layout, broken),
                            clone_method=self.clone_method,
                            vms=observe_vms(self.layout, broken),
                            now=time.time(),
                            trash=observe_trash(self.layout),
                            broken=broken,
                            snapshots=observe_snapshots(self.layout, desired, caps),
                            host=caps,
                            space=observe_space(self.layout.root))
        except OSError as e:
            raise os_error("observing the host", e) from None

    def drivers(self, progress: Progress | None = None) -> Drivers:
        # imported here: `plan` and `get` never apply anything, and start faster without them
        from ..disks.driver import DiskDriver
        from ..network.driver import NetworkDriver
        from ..snapshots.driver import SnapshotDriver
        from ..vms.driver import VmDriver
        from .apply import Drivers
        if self.instance is None:
            raise PermanentError(f"{self.layout.root}: has no instance identity yet (only reconcile makes it)")
        return Drivers([NetworkDriver(self.instance), DiskDriver(self.layout, self.pubkey, self.reflink, progress),
                        VmDriver(self.layout, self.boot_timeout),
                        SnapshotDriver(self.layout, self.instance, self.boot_timeout)])


def open_host(store: Store, prepare: bool, clone_method: str = "auto", trust: bool = True) -> Host:
    """`trust=False` only for doctor, which reports an untrusted state directory rather than refuse it."""
    layout = Layout(store.root)
    if trust:
        store.trusted()
    if prepare:
        store.ensure()
        clean_tmp(layout)
        layout.tmp.mkdir(mode=0o700, exist_ok=True)
        ensure_ssh_key(layout.ssh_key, layout.tmp)
    instance = store.instance(create=prepare) if store.root.is_dir() else None
    pub = layout.ssh_key.with_suffix(".pub")
    pubkey = pub.read_text().strip() if pub.exists() else ""
    available = _clone_methods(layout)
    if clone_method != "auto" and clone_method not in available:
        raise PermanentError(f"--clone-method {clone_method}: not available on {store.root} "
                             f"(available: {', '.join(available)})")
    chosen = available[0] if clone_method == "auto" else CloneMethod(clone_method)
    return Host(layout, instance, pubkey, chosen, available, write=prepare)


def _clone_methods(layout: Layout) -> tuple[CloneMethod, ...]:
    if not layout.tmp.is_dir():
        return (CloneMethod.SPARSE,)
    try:
        return tuple(ext4.detect_clone_methods(layout.tmp))
    except WarmvmError:
        return (CloneMethod.SPARSE,)


def clean_tmp(layout: Layout) -> None:
    """Leftovers of killed runs: whatever in the tmp area a writer that no longer runs left (each entry
    names its writer; a live one, this daemon's own boot waits among them, is never disturbed), a
    snapshot template's QEMU among them: found by its own pid file there, and killed."""
    for leftover in sorted(layout.tmp.iterdir()) if layout.tmp.is_dir() else []:
        if writer_alive(leftover.name):
            continue
        if leftover.name.startswith((f"{TEMPLATE_DIR}.", "template-")) and leftover.is_dir():
            files = VmFiles(leftover)
            qemu.kill(files, qemu.running_pid(files) or qemu.find_untracked(files))
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def ensure_ssh_key(key: Path, scratch: Path) -> None:
    """The host's key pair for its guests, made once by warmvm (both files appear together or not at
    all). A pair found there is used only if it can only have been made by us: regular files of ours,
    the private one 0600 in a 0700 directory of ours, the public one derived from it; else refused."""
    pub = key.with_suffix(".pub")
    if key.exists() or key.is_symlink():
        _check_key(key, pub)
        return
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=scratch_prefix("key")) as tmp:
        made = ssh.keygen(Path(tmp), "warmvm")
        made.with_suffix(".pub").replace(pub)
        made.replace(key)  # last: the private key's presence means the pair is complete
    key.chmod(0o600)


def _check_key(key: Path, pub: Path) -> None:
    me = os.geteuid()
    for path, mode in ((key.parent, 0o700), (key, 0o600), (pub, None)):
        st = os.lstat(path) if path.exists() or path.is_symlink() else None
        if st is None or not (stat.S_ISREG(st.st_mode) or (path == key.parent and stat.S_ISDIR(st.st_mode))) \
                or st.st_uid != me or (mode is not None and stat.S_IMODE(st.st_mode) != mode):
            raise PermanentError(f"{path}: not a key warmvm made (a regular file of root's, mode "
                                 f"{mode or 0o644:04o}); remove {key.parent} and warmvm makes a new pair")
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, check=False).stdout.split()[:2]
    if derived != pub.read_text().split()[:2]:
        raise PermanentError(f"{pub}: does not belong to {key}; remove {key.parent} and warmvm makes a new pair")
