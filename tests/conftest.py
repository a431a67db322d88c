"""Shared fixtures: a private network namespace per test, and CLI helpers.

Tests never touch the host's own network: `netns` creates a namespace with a
name unique to this run, moves the test's thread into it (so netlink sockets,
/dev/net/tun and child processes all land there), and always moves back and
deletes it, which removes every device made inside.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
REPO = Path(__file__).resolve().parent.parent


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"wvt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        _setns(home)
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False)


def qemu_pids_under(directory: Path) -> list[int]:
    """QEMU processes whose command line points into `directory` (so: started by this test)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].startswith(b"qemu-system") and any(str(directory).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


@pytest.fixture(autouse=True)
def no_leftover_qemu(tmp_path: Path) -> Iterator[None]:
    """Every QEMU a test started is gone after it, pass or fail."""
    yield
    for pid in qemu_pids_under(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def network_spec(name: str = "default", bridge: str = "wvbr0", cidr: str = "10.88.0.0/24",
                 size: int = 3, prefix: str | None = None) -> str:
    pool = f"    size: {size}\n" + (f"    prefix: {prefix}\n" if prefix else "")
    return (f"apiVersion: warmvm/v1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n"
            f"  bridge: {bridge}\n  cidr: {cidr}\n  tapPool:\n{pool}")


def vm_spec(name: str, **spec: str) -> str:
    body = "".join(f"  {k}: {v}\n" for k, v in spec.items()) or "  {}\n"
    return f"apiVersion: warmvm/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n{body}"


def warmvm(specs: Path, state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs the real CLI as a child process (it inherits the test's namespace)."""
    cmd = [sys.executable, "-m", "controller", "--specs", str(specs), "--state", str(state), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, Path]:
    specs, state = tmp_path / "specs", tmp_path / "state"
    specs.mkdir()
    return specs, state


def assert_verified(specs: Path, state: Path) -> None:
    """The suite's oracle: once a reconcile has converged, `warmvm verify` finds no leak (a leak after
    convergence is a reconciler bug)."""
    converged = warmvm(specs, state, "reconcile", timeout=300)
    assert converged.returncode == 0, converged.stderr
    audit = warmvm(specs, state, "verify", "-o", "json")
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["clean"], report["leaks"]


IMAGE = Path(os.environ.get("WARMVM_TEST_IMAGE", REPO / "state" / "demo-image"))


@pytest.fixture(scope="session")
def demo_image() -> Path:
    """The demo guest (built once, cached): for the tests that boot real VMs."""
    subprocess.run(["bash", str(REPO / "hack" / "build-image.sh"), str(IMAGE)], check=True,
                   stdin=subprocess.DEVNULL)
    return IMAGE


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A real file system that really fills up: small_fs("40m") mounts a tmpfs of that size and
    returns a state directory's path on it (unmounted after the test, pass or fail)."""
    mounts: list[Path] = []

    def make(size: str) -> Path:
        mount = tmp_path / f"small-{len(mounts)}"
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)], check=True)
        mounts.append(mount)
        return mount / "state"
    yield make
    for mount in mounts:
        subprocess.run(["umount", "-l", str(mount)], check=False)
