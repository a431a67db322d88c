"""Shared fixtures: a private network namespace per test, the demo image, a host to boot it on.

The helpers live in tests/support (test modules import them from there, never from each other):
support.cli runs the CLI and writes specs, support.images makes the fake image and the demo image's
spec, support.netns makes the namespaces and finds a test's QEMU processes, support.daemon runs
`warmvm watch`, support.waits has `wait_for`. This file only turns some of them into fixtures.

Tests never touch the host's own network: `netns` puts the test in a namespace of its own (see
support.netns), always deleted after it, which removes every device made inside.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support.cli import network_spec, warmvm, write
from .support.images import build_demo_image, demo_image_spec
from .support.netns import kill_qemu_under, private_netns


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with private_netns() as name:
        yield name


@pytest.fixture(autouse=True)
def no_leftover_qemu(tmp_path: Path) -> Iterator[None]:
    """Every QEMU a test started is gone after it, pass or fail."""
    yield
    kill_qemu_under(tmp_path)


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, Path]:
    specs, state = tmp_path / "specs", tmp_path / "state"
    specs.mkdir()
    return specs, state


@pytest.fixture(scope="session")
def demo_image() -> Path:
    """The demo guest (built once, cached): for the tests that boot real VMs."""
    return build_demo_image()


@pytest.fixture
def demo_host(netns: str, tmp_path: Path, demo_image: Path) -> Iterator[tuple[Path, Path]]:
    """(specs, state) for VMs that boot: the demo image as the default, a network with one warm TAP.
    Afterwards every VM the test made is stopped and removed."""
    specs, state = tmp_path / "specs", tmp_path / "state"
    write(specs / "net.yaml", network_spec(size=1))
    write(specs / "image.yaml", demo_image_spec(demo_image))
    yield specs, state
    for spec in specs.glob("*.yaml"):  # with no specs the product stops and removes every VM it made;
        spec.unlink()                  # the autouse no_leftover_qemu fixture is only the backstop
    warmvm(specs, state, "--confirm-removals", "--retain-removed", "0", "reconcile")


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
