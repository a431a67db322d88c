"""The host as a command sees it: state layout, SSH key, clone method, drivers, observe.

Wiring only: `open_host` builds what `plan` and `reconcile` need from the
state directory, so the CLI (and the bench) stay thin. `prepare` makes the
state the reconciler writes to (directory, key pair) and is called only under
the lock; plan never writes anything.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import disks
from .apply import Drivers
from .diskops import DiskOps, Progress, clean_tmp
from .errors import PermanentError
from .layout import Layout
from .model import Desired
from .netlink import NetlinkDriver
from .observed import Observed, observe
from .store import Store
from .vmops import VmOps


@dataclass
class Host:
    layout: Layout
    pubkey: str
    clone_method: str
    reflink: bool = False  # the state directory clones by reflink
    boot_timeout: float = 60.0

    def observer(self, desired: Desired) -> Callable[[], Observed]:
        return partial(observe, desired, self.layout, self.pubkey, self.clone_method)

    def drivers(self, progress: Progress | None = None) -> Drivers:
        net = NetlinkDriver()
        return Drivers(net=net, disks=DiskOps(self.layout, self.pubkey, self.reflink, progress),
                       vms=VmOps(self.layout, net, self.boot_timeout))


def open_host(store: Store, prepare: bool, clone_method: str = "auto") -> Host:
    layout = Layout(store.root)
    if prepare:
        store.ensure()
        clean_tmp(layout)
        ensure_ssh_key(layout.ssh_key)
        layout.tmp.mkdir(mode=0o700, exist_ok=True)
    pub = layout.ssh_key.with_suffix(".pub")
    pubkey = pub.read_text().strip() if pub.exists() else ""
    available = [m.value for m in disks.detect_clone_methods(layout.tmp)] if layout.tmp.is_dir() else ["sparse"]
    if clone_method != "auto" and clone_method not in available:
        raise PermanentError(f"--clone-method {clone_method}: not available on {store.root} "
                             f"(available: {', '.join(available)})")
    return Host(layout, pubkey, available[0] if clone_method == "auto" else clone_method,
                reflink="reflink" in available)


def ensure_ssh_key(key: Path) -> None:
    """The host's key pair for its guests, made once (both files appear together or not at all)."""
    if key.exists() and key.with_suffix(".pub").exists():
        return
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=key.parent) as tmp:
        made = Path(tmp) / key.name
        proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "warmvm", "-f", str(made)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise PermanentError(f"ssh-keygen failed: {proc.stderr.strip()}")
        made.with_suffix(".pub").replace(key.with_suffix(".pub"))
        made.replace(key)  # last: the private key's presence means the pair is complete
    key.chmod(0o600)
