"""Reads what only the audits need: processes, mounts and loop devices that point into the state
directory, leftovers in its tmp area, its VM and image directories, and devices that are not ours."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..adapters.netlink.rtnl import dump_links
from ..network.marks import parse_mark
from ..statedir.layout import Layout
from ..statedir.store import writer_alive


@dataclass(frozen=True)
class Qemu:
    pid: int
    pidfile: str  # its -pidfile argument, resolved


@dataclass(frozen=True)
class Foreign:
    name: str
    why: str


@dataclass(frozen=True)
class HostFacts:
    qemus: tuple[Qemu, ...]  # QEMU processes whose pid file lies in the state directory
    tmp: tuple[str, ...]  # entries of state/tmp whose writer no longer runs
    mounts: tuple[str, ...]  # mounts whose source or mount point lies in the state directory
    loops: tuple[str, ...]  # loop devices backed by a file in the state directory
    vm_dirs: tuple[str, ...]
    image_dirs: tuple[str, ...]
    marked_by_others: tuple[Foreign, ...]  # devices carrying another instance's mark


def observe_host(layout: Layout, instance: str | None) -> HostFacts:
    root = os.path.realpath(layout.root)
    leftovers = tuple(n for n in _names(layout.tmp) if not writer_alive(n))  # a live writer's are its work
    return HostFacts(qemus=tuple(_qemus(root)), tmp=leftovers, mounts=tuple(_mounts(root)),
                     loops=tuple(_loops(root)), vm_dirs=_names(layout.vms), image_dirs=_names(layout.images),
                     marked_by_others=tuple(_others(instance)))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _names(directory: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(p.name for p in directory.iterdir()))
    except FileNotFoundError:
        return ()


def _qemus(root: str) -> list[Qemu]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system") or b"-pidfile" not in argv[:-1]:
            continue
        pidfile = os.path.realpath(os.path.join(cwd, os.fsdecode(argv[argv.index(b"-pidfile") + 1])))
        if _inside(pidfile, root):
            found.append(Qemu(int(entry.name), pidfile))
    return found


def _mounts(root: str) -> list[str]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target = (f.replace("\\040", " ") for f in line.split()[:2])
        if _inside(os.path.realpath(target), root) or (source.startswith("/") and _inside(source, root)):
            out.append(f"{source} on {target}")
    return out


def _loops(root: str) -> list[str]:
    out = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            path = backing.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            continue
        if _inside(path, root):
            out.append(f"/dev/{backing.parent.parent.name} -> {path}")
    return out


def _others(instance: str | None) -> list[Foreign]:
    out = []
    for link in dump_links():
        mark = parse_mark(link.alias)
        if mark is not None and mark.instance is not None and mark.instance != instance:
            out.append(Foreign(link.name, f"marked by warmvm instance {mark.instance}"))
    return out
