#!/usr/bin/env python3
"""Benchmarks work-disk preparation for a VM: from scratch versus through a seed.

    hack/bench_disk.py [--root-mib 256] [--files 4000] [--disk-size 4G] [--runs 5] [--json OUT]

For each state directory (a temporary one on the repo's own file system, and
one on a loop-mounted XFS with reflink=1 that this script makes and always
removes) it times, until the disk file is ready for QEMU and fsynced:
  scratch   build_ext4 of disk-size from the /root tree + inject the SSH key
  seed      clone of the pre-built sized seed, by each clone method the
            directory supports (the key is already in the seed)
and the one-time costs: base seed build (+ key) and sized-seed derivation
(clone of the base seed + grow to disk-size). The /root tree comes from
hack/make-root.py, cached under state/. Page caches are warm: every path reads
the same tree or seed again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib import STATE, root_tree, summary, summary_as, timed

from controller.adapters import ext4 as disks
from controller.adapters.ext4 import CloneMethod
from controller.disks.plan import seed_size_for

MiB = 1 << 20
KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBenchBe bench@warmvm\n"


@dataclass
class Result:
    fs: str
    step: str
    samples_ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return summary(self.samples_ms)["median"]


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


FSYNC = True  # mke2fs fsyncs its output, so by default every step does


def fsync(path: Path) -> None:
    if not FSYNC:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(*args: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


@contextmanager
def loop_xfs(where: Path, size: int) -> Iterator[Path]:
    """A mounted XFS (reflink=1) on a sparse loop file; always unmounted and detached."""
    backing, mnt = where / "xfs.img", where / "xfs.mnt"
    mnt.mkdir()
    with open(backing, "wb") as f:
        f.truncate(size)
    loop, mounted = "", False
    try:
        run("mkfs.xfs", "-q", "-m", "reflink=1", str(backing))
        loop = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                              text=True, check=True).stdout.strip()
        run("mount", loop, str(mnt))
        mounted = True
        yield mnt
    finally:
        if mounted and subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        backing.unlink(missing_ok=True)
        mnt.rmdir()


def verify(disk: Path, want: disks.Tree, size: int) -> None:
    """Untimed check that a prepared disk holds the tree and the key at the right size."""
    if disks.virtual_size(disk) != size:
        raise RuntimeError(f"{disk}: virtual size {disks.virtual_size(disk)} != {size}")
    disks.fsck(disk)
    if disks.read_tree(disk) != want:
        raise RuntimeError(f"{disk}: files differ from the /root tree")


def bench_dir(label: str, d: Path, root: Path, size: int, runs: int, check: bool) -> list[Result]:
    methods = disks.detect_clone_methods(d)
    raw_method = CloneMethod.REFLINK if CloneMethod.REFLINK in methods else CloneMethod.SPARSE
    base_size = seed_size_for(disks.content_size(root))  # the controller's own rule
    base, sized, disk = d / "base.raw", d / "sized.raw", d / "disk"
    want = {**disks.read_dir_tree(root), ".ssh": None, ".ssh/authorized_keys": KEY} if check else {}
    res = {k: Result(label, k) for k in [
        "scratch: mkfs -d + key", *[f"seed clone: {m.value}" for m in methods],
        "once: base seed (mkfs -d + key)", f"once: sized seed ({raw_method.value} + resize2fs)"]}

    def build(out: Path, out_size: int, label: str) -> None:  # mkfs -d + key
        disks.build_ext4(out, out_size, root, label=label)
        disks.inject_file(out, "/.ssh/authorized_keys", KEY, 0o600)
        fsync(out)

    def make_sized(out: Path) -> None:
        disks.clone(base, out, raw_method, base_size)
        disks.grow(out, size)
        fsync(out)

    def clone(method: CloneMethod) -> None:
        disks.clone(sized, disk, method, size)
        fsync(disk)

    print(f"[{label}] {d}: methods {[m.value for m in methods]}, base seed {base_size // MiB} MiB", file=sys.stderr)
    for i in range(runs):
        base.unlink(missing_ok=True)
        res["once: base seed (mkfs -d + key)"].samples_ms.append(timed(lambda: build(base, base_size, "seed")))
        sized.unlink(missing_ok=True)
        res[f"once: sized seed ({raw_method.value} + resize2fs)"].samples_ms.append(timed(lambda: make_sized(sized)))
        res["scratch: mkfs -d + key"].samples_ms.append(timed(lambda: build(disk, size, "work")))
        if check and i == 0:
            verify(disk, want, size)
        disk.unlink()
        for m in methods:
            res[f"seed clone: {m.value}"].samples_ms.append(timed(lambda m=m: clone(m)))
            if check and i == 0:
                verify(disk, want, size)
            disk.unlink()
        print(f"[{label}] run {i + 1}/{runs} done", file=sys.stderr)
    return list(res.values())


def table(results: list[Result], scratch_of: dict[str, float]) -> str:
    rows = [f"{'file system':<22} {'step':<40} {'median':>10} {'min':>10} {'max':>10} {'scratch/x':>10}"]
    last = ""
    for r in results:
        ratio = f"{scratch_of[r.fs] / r.median:.0f}x" if r.step.startswith("seed") else ""
        s = summary(r.samples_ms)
        rows.append(f"{r.fs if r.fs != last else '':<22} {r.step:<40} {s['median']:>8.1f}ms "
                    f"{s['min']:>8.1f}ms {s['max']:>8.1f}ms {ratio:>10}")
        last = r.fs
    return "\n".join(rows)


def fs_type(path: Path) -> str:
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True).stdout
    return out.strip() or "?"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--disk-size", default="4G")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--state", type=Path, default=STATE, help="cache and scratch space (default: state/)")
    ap.add_argument("--no-xfs", action="store_true", help="skip the loop-mounted XFS")
    ap.add_argument("--no-fsync", action="store_true", help="do not fsync clones (mkfs.ext4 still does)")
    ap.add_argument("--no-verify", action="store_true", help="skip checking the files of the first run's disks")
    a = ap.parse_args(argv)
    size = parse_size(a.disk_size)
    global FSYNC
    FSYNC = not a.no_fsync
    # SIGINT (even if inherited as ignored), SIGTERM and SIGHUP raise KeyboardInterrupt,
    # so the finally blocks unmount and detach the XFS.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)

    a.state.mkdir(parents=True, exist_ok=True)
    root = root_tree(a.state, a.root_mib, a.files)
    results: list[Result] = []
    work = Path(tempfile.mkdtemp(dir=a.state, prefix="bench-disk-"))
    try:
        on_root = work / "root-fs"
        on_root.mkdir()
        results += bench_dir(f"{fs_type(on_root)} (repo fs)", on_root, root, size, a.runs, not a.no_verify)
        shutil.rmtree(on_root)
        if not a.no_xfs:
            xfs_size = max(4 << 30, 4 * a.root_mib * MiB + (1 << 30))
            with loop_xfs(work, xfs_size) as mnt:
                results += bench_dir("xfs (loop, reflink=1)", mnt, root, size, a.runs, not a.no_verify)
    except KeyboardInterrupt:
        print("bench_disk: interrupted, cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)

    scratch_of = {r.fs: r.median for r in results if r.step.startswith("scratch")}
    print(f"\nwork disk {a.disk_size} from a /root tree of {a.root_mib} MiB / {a.files} files; "
          f"{a.runs} runs, {'each step ends with fsync' if FSYNC else 'no fsync (mkfs.ext4 still fsyncs)'}\n")
    print(table(results, scratch_of))
    if a.json:
        a.json.write_text(json.dumps({
            "params": {"root_mib": a.root_mib, "files": a.files, "disk_size": size, "runs": a.runs},
            "results": [{**asdict(r), **summary_as("{}_ms", r.samples_ms),
                         "scratch_ratio": scratch_of[r.fs] / r.median if r.step.startswith("seed") else None}
                        for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
