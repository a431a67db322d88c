"""Observed image and disk state: seeds on disk, their inputs' fingerprints, VM disks.

The observe side for seeds and work disks. Seed files are complete by
construction (built under a temporary name, checked, renamed), so a listing
of the image directory is the truth about which seeds exist. A seed's
fingerprint covers what it is built from (the rootfs or source directory, as
stat data), the public key injected into it, its size and the seed format, so
any change to them means a new seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .layout import SEED, Layout
from .model import Image
from .store import read_json

SEED_FORMAT = 1


@dataclass(frozen=True)
class SeedFiles:
    base: Path
    size: int
    mtime: float
    sized: dict[int, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageState:
    name: str
    inputs: str | None  # fingerprint of the seed's inputs now; None: no seed wanted
    seeds: dict[str, SeedFiles]  # by fingerprint
    failed: dict[str, str]  # fingerprint -> why its generation failed

    def ready(self) -> str | None:
        """The seed to clone from: the current one, else the newest older one still on disk."""
        if self.inputs in self.seeds:
            return self.inputs
        older = sorted(self.seeds.items(), key=lambda kv: kv[1].mtime, reverse=True)
        return older[0][0] if older else None


@dataclass(frozen=True)
class DiskState:
    vm: str
    image: str
    path: Path
    size: int
    taken: str  # "seed:qcow2", "seed:reflink", "seed:sparse" or "scratch"
    seed: Path | None  # the seed file a qcow2 disk is backed by (it must outlive the disk)
    created: float


def fingerprint(image: Image, pubkey: str) -> str | None:
    if image.seed is None:
        return None
    parts: list[object] = [SEED_FORMAT, image.seed.size, pubkey]
    if image.seed.from_rootfs is not None:
        st = image.rootfs.stat()
        parts += ["rootfs", str(image.rootfs), image.seed.from_rootfs, st.st_size, st.st_mtime_ns, st.st_ino]
    else:
        assert image.seed.from_dir is not None
        parts += ["dir", str(image.seed.from_dir), _tree_stat(image.seed.from_dir)]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _tree_stat(root: Path) -> list[tuple[str, int, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns, st.st_mode))
    return out


def observe_images(layout: Layout, images: dict[str, Image], pubkey: str) -> dict[str, ImageState]:
    """Every image with a spec or a directory in the state (a removed image's seeds linger until freed)."""
    names = set(images)
    if (layout.root / "images").is_dir():
        names |= {p.name for p in (layout.root / "images").iterdir() if p.is_dir()}
    out = {}
    for name in sorted(names):
        image = images.get(name)
        inputs = fingerprint(image, pubkey) if image else None
        out[name] = ImageState(name, inputs, _seed_files(layout.image_dir(name)), _failures(layout.seed_record(name)))
    return out


def _seed_files(directory: Path) -> dict[str, SeedFiles]:
    bases: dict[str, os.stat_result] = {}
    sized: dict[str, dict[int, Path]] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    for entry in entries:
        m = SEED.match(entry.name)
        if not m:
            continue
        if m.group(2):
            sized.setdefault(m.group(1), {})[int(m.group(2))] = Path(entry.path)
        else:
            bases[m.group(1)] = entry.stat()
    return {fp: SeedFiles(directory / f"seed-{fp}.ext4", st.st_size, st.st_mtime, sized.get(fp, {}))
            for fp, st in bases.items()}


def _failures(record: Path) -> dict[str, str]:
    data = read_json(record)
    if data and data.get("error"):
        return {data["fingerprint"]: data["error"]}
    return {}


def observe_disks(layout: Layout) -> dict[str, DiskState]:
    out = {}
    vms = layout.root / "vms"
    for vm_dir in sorted(vms.iterdir()) if vms.is_dir() else []:
        data = read_json(layout.disk_record(vm_dir.name))
        if not data or not Path(data["path"]).exists():
            continue  # a disk without its record was never finished: it is rebuilt
        out[vm_dir.name] = DiskState(vm_dir.name, data["image"], Path(data["path"]), data["size"], data["taken"],
                                     Path(data["seed"]) if data.get("seed") else None, data["created"])
    return out
