"""VM work disks: planning how each VM gets its disk. Pure.

The fast path clones the image's sized seed (by the best clone method this
host has); the slow path, for images without a ready seed, builds a new ext4
of the disk's size from the image's /root. Either way the disk holds the same
files. A disk grows when its VM's diskSize grows (while the VM is stopped);
shrinking is refused. A disk is deleted when its VM's spec goes (once the VM
is stopped).
"""

from __future__ import annotations

from .actions import Action, DiskClone, DiskDelete, DiskGrow, DiskScratch, SeedSize
from .imagestate import DiskState, ImageState
from .model import VM, Desired


def plan_disks(desired: Desired, images: dict[str, ImageState], disks: dict[str, DiskState],
               clone_method: str, running: frozenset[str] = frozenset()) -> tuple[list[Action], list[str]]:
    """`running`: VMs whose QEMU runs (their disks are neither grown nor deleted under them)."""
    actions: list[Action] = []
    problems: list[str] = []
    for vm in sorted(desired.vms.values(), key=lambda v: v.name):
        if vm.image is None:
            continue
        disk = disks.get(vm.name)
        if disk is None:
            acts, problem = _new_disk(vm, desired, images[vm.image], clone_method, actions)
            actions += acts
        else:
            problem = _existing_disk(vm, disk, running, actions)
        if problem:
            problems.append(f"vm/{vm.name}: {problem}")
    for name in sorted(set(disks) - set(desired.vms)):
        if name not in running:
            actions.append(DiskDelete(name))
    return actions, problems


def _new_disk(vm: VM, desired: Desired, state: ImageState, method: str,
              planned: list[Action]) -> tuple[list[Action], str | None]:
    image = desired.images[vm.image]  # type: ignore[index]
    ready = state.ready() if image.seed else None
    if ready is None:
        return [DiskScratch(vm.name, image, vm.disk_size)], None
    seed = state.seeds[ready]
    if vm.disk_size < seed.size:
        return [], (f"diskSize {_mib(vm.disk_size)} is smaller than the work seed of image {image.name!r} "
                    f"({_mib(seed.size)})")
    actions: list[Action] = []
    sizing = SeedSize(image, ready, vm.disk_size)
    if vm.disk_size not in seed.sized and sizing not in planned:
        actions.append(sizing)
    actions.append(DiskClone(vm.name, image, ready, vm.disk_size, method))
    return actions, None


def _existing_disk(vm: VM, disk: DiskState, running: frozenset[str], actions: list[Action]) -> str | None:
    if vm.disk_size < disk.size:
        return f"diskSize {_mib(vm.disk_size)} is smaller than its disk ({_mib(disk.size)}): shrinking is refused"
    if vm.disk_size > disk.size:
        if vm.name in running:
            return (f"diskSize grows to {_mib(vm.disk_size)} once the VM is stopped "
                    "(set running: false, reconcile, then running: true)")
        actions.append(DiskGrow(vm.name, vm.disk_size))
    return None


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g}Mi"
