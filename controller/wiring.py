"""Wiring: the host as a command sees it, with its drivers, observers and spec probe.

`open_host` builds what `plan` and `reconcile` need from the state
directory, so the CLI (and the bench) stay thin. `prepare` makes the state
the reconciler writes to (directory, key pair, tmp area) and is called only
under the lock; plan never writes anything. This is the one module that
knows every domain's observer and driver.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .core.errors import PermanentError, WarmvmError, os_error
from .core.model import Desired, Policy
from .core.state import Observed
from .disks import ext4
from .disks.observe import ImageFiles, observe_disks, observe_images
from .network.observe import observe_net
from .snapshots.observe import observe_snapshots
from .specs.documents import spec_files
from .specs.load import load
from .statedir.layout import Layout, VmFiles
from .statedir.safety import unsafe_reason
from .statedir.store import Store
from .vms import qemu
from .vms.observe import observe_trash, observe_vms

if TYPE_CHECKING:
    from .core.apply import Drivers
    from .core.events import Lifecycle
    from .core.reconcile import Background, Result
    from .disks.driver import Progress


def load_specs(root: Path, policy: Policy | None = None) -> Desired:
    """The specs under `root`, their image files checked on this host, under the command's policy.
    A spec decides which host files a guest receives: a spec directory or file another user could
    write is refused (sshd's StrictModes), as the state directory is."""
    for path in [root, *spec_files(root)]:
        reason = unsafe_reason(path)
        if reason is not None:
            raise PermanentError(f"spec refused: {reason} (chown root and chmod go-w)")
    desired = load(root, ImageFiles())
    return replace(desired, policy=policy) if policy is not None else desired


@dataclass(frozen=True)
class Options:
    """What a reconcile needs from its command line."""

    specs: Path
    policy: Policy
    clone_method: str = "auto"
    boot_timeout: float = 60.0
    lock_timeout: float = 5.0


@dataclass(frozen=True)
class Converged:
    desired: Desired
    result: Result
    ms: dict[str, float]  # where the time went: total, lock wait, load

    @property
    def ok(self) -> bool:
        last = self.result.last_plan
        return self.result.converged and not self.desired.errors and not (last and (last.problems or last.held_back))


def converge(store: Store, options: Options, log: Lifecycle, background: Background | None = None) -> Converged:
    """One reconcile of the host to the specs, under the state directory's lock: what `warmvm
    reconcile` does once and `warmvm watch` on every wake-up."""
    from .core.reconcile import reconcile
    start = time.perf_counter()
    with store.lock(options.lock_timeout):
        locked = time.perf_counter()
        desired = load_specs(options.specs, options.policy)
        for error in desired.errors:
            print(error, file=sys.stderr)
        loaded = time.perf_counter()
        host = open_host(store, True, options.clone_method)
        host.boot_timeout = options.boot_timeout
        drivers = host.drivers(log.progress if sys.stderr.isatty() else None)
        try:
            result = reconcile(desired, drivers, host.observer(desired), log, background=background)
        finally:
            drivers.close()
    return Converged(desired, result, {"total": _ms(start), "lock": (locked - start) * 1000,
                                       "load": (loaded - locked) * 1000})


def report(done: Converged, log: Lifecycle) -> None:
    """The closing lines of a reconcile: its problems, what it held back and why, one summary."""
    last, result = done.result.last_plan, done.result
    for problem in last.problems if last else ():
        print(f"problem: {problem}", file=sys.stderr)
    held = last.held_back if last else ()
    if held and last is not None:
        print(f"held back: {'; '.join(last.holds)}", file=sys.stderr)
        for action in held:
            print(f"(held back) {action.describe()}", file=sys.stderr)
    log.summary(f"reconcile: {'converged' if done.ok else 'NOT converged'}: {result.applied} applied, "
                f"{len(result.failures)} failed, {len(held)} held back, {len(done.desired.errors)} spec errors, "
                f"{result.passes} passes, {done.ms['total']:.1f}ms (lock wait {done.ms['lock']:.1f}, "
                f"load {done.ms['load']:.1f}, observe {result.observe_ms:.1f}, plan {result.plan_ms:.1f})",
                converged=done.ok)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


@dataclass
class Host:
    layout: Layout
    instance: str | None  # this state directory's identity (None until the first reconcile makes it)
    pubkey: str
    clone_method: str
    reflink: bool = False  # the state directory clones by reflink
    boot_timeout: float = 60.0

    def observer(self, desired: Desired) -> Callable[[], Observed]:
        return lambda: self.observe(desired)

    def observe(self, desired: Desired) -> Observed:
        broken: dict[str, str] = {}
        try:
            return Observed(net=observe_net(self.instance),
                            images=observe_images(self.layout, desired.images, self.pubkey),
                            disks=observe_disks(self.layout, broken),
                            clone_method=self.clone_method,
                            vms=observe_vms(self.layout, broken),
                            now=time.time(),
                            trash=observe_trash(self.layout),
                            broken=broken,
                            snapshots=observe_snapshots(self.layout, desired))
        except OSError as e:
            raise os_error("observing the host", e) from None

    def drivers(self, progress: Progress | None = None) -> Drivers:
        # imported here: `plan` and `get` never apply anything, and start faster without them
        from .core.apply import Drivers
        from .disks.driver import DiskDriver
        from .network.driver import NetworkDriver
        from .snapshots.driver import SnapshotDriver
        from .vms.driver import VmDriver
        if self.instance is None:
            raise PermanentError(f"{self.layout.root}: has no instance identity yet (only reconcile makes it)")
        return Drivers([NetworkDriver(self.instance), DiskDriver(self.layout, self.pubkey, self.reflink, progress),
                        VmDriver(self.layout, self.boot_timeout), SnapshotDriver(self.layout, self.boot_timeout)])


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
    return Host(layout, instance, pubkey, available[0] if clone_method == "auto" else clone_method,
                reflink="reflink" in available)


def _clone_methods(layout: Layout) -> list[str]:
    if not layout.tmp.is_dir():
        return ["sparse"]
    try:
        return [m.value for m in ext4.detect_clone_methods(layout.tmp)]
    except WarmvmError:
        return ["sparse"]


def clean_tmp(layout: Layout) -> None:
    """Leftovers of a killed run (we hold the lock, so nothing else is building), a snapshot
    template's QEMU among them: found by its own pid file in this tmp area, and killed."""
    if layout.tmp.is_dir():
        for leftover in layout.tmp.glob("template-*"):
            files = VmFiles(leftover)
            qemu.kill(files, qemu.running_pid(files) or qemu.find_untracked(files))
        shutil.rmtree(layout.tmp)


def ensure_ssh_key(key: Path, scratch: Path) -> None:
    """The host's key pair for its guests, made once by warmvm (both files appear together or not at
    all). A pair found there is used only if it can only have been made by us: regular files of ours,
    the private one 0600 in a 0700 directory of ours, the public one derived from it; else refused."""
    pub = key.with_suffix(".pub")
    if key.exists() or key.is_symlink():
        _check_key(key, pub)
        return
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        made = Path(tmp) / key.name
        proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "warmvm", "-f", str(made)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise PermanentError(f"ssh-keygen failed: {proc.stderr.strip()}")
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
