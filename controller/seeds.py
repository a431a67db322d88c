"""Work seeds: planning which seeds to build, size and free. Pure.

An image's seed is its /root as a small ext4, built once per set of inputs
(fingerprint) so that VM work disks are clones instead of file systems built
from scratch. A seed grown to a disk size ("sized seed") is derived once per
size in use, so a VM's disk is a plain clone with nothing left to resize.
While a new seed is missing the newest older one stays in use; a failed
generation is not retried until the inputs change (the error is shown).
Seeds are freed once nothing uses them: a qcow2 work disk is backed by its
seed file, so that file lives as long as the disk.
"""

from __future__ import annotations

from pathlib import Path

from .actions import Action, SeedDelete, SeedGenerate
from .imagestate import DiskState, ImageState
from .model import Desired


def plan_seeds(desired: Desired, images: dict[str, ImageState]) -> list[Action]:
    actions: list[Action] = []
    for image in sorted(desired.images.values(), key=lambda i: i.name):
        state = images[image.name]
        if state.inputs is not None and state.inputs not in state.seeds and state.inputs not in state.failed:
            actions.append(SeedGenerate(image, state.inputs))
    return actions


def plan_seed_cleanup(desired: Desired, images: dict[str, ImageState], disks: dict[str, DiskState]) -> list[Action]:
    actions: list[Action] = []
    backing = {d.seed for d in disks.values() if d.seed is not None}
    for name, state in sorted(images.items()):
        if name not in desired.images and any(d.image == name for d in disks.values()):
            continue  # its VMs' disks still exist: they go first
        keep = _in_use(desired, state, name) | backing
        files = [f for seed in state.seeds.values() for f in (seed.base, *seed.sized.values()) if f not in keep]
        if files:
            actions.append(SeedDelete(name, tuple(sorted(files))))
    return actions


def _in_use(desired: Desired, state: ImageState, name: str) -> set[Path]:
    """The seed files new VMs of this image would use: the ready seed and all its sizes (a size
    made once is likely wanted again as VMs come and go; each costs the seed's data once)."""
    if name not in desired.images or desired.images[name].seed is None:
        return set()
    ready = state.ready()
    if ready is None:
        return set()
    seed = state.seeds[ready]
    return {seed.base, *seed.sized.values()}
