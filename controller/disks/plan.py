"""Disk planning: work seeds and VM work disks. Pure.

Work disks: the fast path clones the image's sized seed (by the best clone
method this host has); the slow path, for images without a ready seed,
builds a new ext4 of the disk's size from the image's /root. Either way the
disk holds the same files. A disk grows when its VM's diskSize grows (while
the VM is stopped); shrinking is refused. A disk is deleted when its VM's
spec goes (once the VM is stopped).

Seeds: an image's seed is its /root as a small ext4, built once per set of
inputs (fingerprint) so that VM work disks are clones instead of file systems
built from scratch. A seed grown to a disk size ("sized seed") is derived
once per size in use, so a VM's disk is a plain clone with nothing left to
resize. While a new seed is missing the newest older one stays in use; a
failed generation is not retried until the inputs change (the error is
shown). Seeds are freed once nothing uses them: a qcow2 work disk is backed
by its seed file, so that file lives as long as the disk.

Room: work disks are sparse, so a guest fills the state's file system as it
writes. A disk is made or grown only while the virtual sizes of all work
disks fit the budget (`Budget`, --disk-overcommit); VMs are taken by name, so
of two that do not fit together the first is made and the second refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..base.actions import Action
from ..base.kinds import CloneMethod, Ref
from ..base.model import VM, Desired
from ..base.units import GiB, human
from .actions import DiskClone, DiskDelete, DiskGrow, DiskScratch, SeedDelete, SeedGenerate, SeedSize
from .state import DiskState, DisksView, ImageState, StateSpace

MiB = 1 << 20


def plan_disks(desired: Desired, observed: DisksView) -> tuple[list[Action], list[str]]:
    """Work disks; a running VM's disk is neither grown nor deleted under it. A removed VM's disk
    goes to the trash with its VM (vms/plan.py) unless nothing is retained, and a VM that comes
    back within the retention gets its own disk back instead of a new one."""
    images, disks, clone_method, running = observed.images, observed.disks, observed.clone_method, observed.running
    actions: list[Action] = []
    problems: list[str] = []
    room = budget(desired, observed)
    for vm in sorted(desired.vms.values(), key=lambda v: v.name):
        if vm.image is None or vm.name in observed.broken_vms:
            continue
        disk = disks.get(vm.name)
        if disk is None and observed.restorable(vm.name, desired.policy.retain_removed):
            continue
        if disk is None:
            acts, problem = _new_disk(vm, desired, images[vm.image], clone_method, actions)
        else:
            acts, problem = _existing_disk(vm, disk, running)
        more = vm.disk_size - (disk.size if disk else 0)
        if acts and room is not None:
            problem = room.refusal(vm.disk_size, more)
            if problem:
                acts = []  # a seed sized for it alone is not made either
            else:
                room = room.take(more)
        actions += acts
        if problem:
            problems.append(f"{Ref.vm(vm.name)}: {problem}")
    if desired.policy.retain_removed <= 0:
        for name in sorted(set(disks) - set(desired.vms)):
            if name not in running and name not in observed.broken_vms:
                actions.append(DiskDelete(name))
    return actions, problems


def _new_disk(vm: VM, desired: Desired, state: ImageState, method: CloneMethod,
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


def _existing_disk(vm: VM, disk: DiskState, running: frozenset[str]) -> tuple[list[Action], str | None]:
    if vm.disk_size < disk.size:
        return [], f"diskSize {_mib(vm.disk_size)} is smaller than its disk ({_mib(disk.size)}): shrinking is refused"
    if vm.disk_size > disk.size:
        if vm.name in running:
            return [], (f"diskSize grows to {_mib(vm.disk_size)} once the VM is stopped "
                        "(set running: false, reconcile, then running: true)")
        return [DiskGrow(vm.name, vm.disk_size)], None
    return [], None


def reserve(size: int) -> int:
    """What work disks leave of a file system of `size` for warmvm's own writes (records, console
    logs, seeds, snapshots): a twentieth of it, at most 1 GiB."""
    return min(size // 20, GiB)


@dataclass(frozen=True)
class Budget:
    """The room of work disks on the state's file system. A guest may fill its disk to its virtual
    size, so the virtual sizes of all work disks must fit in `ratio` times what they could take:
    the free space, plus what they take already, less the reserve. At 1.0 every guest may fill its
    disk and the file system still holds; above it, that much overcommitted. A qcow2 disk counts its
    whole virtual size (its guest can fill it); seeds count only as what they take (in `free`). On a
    reflink file system a clone's blocks shared with its seed count as its own: optimistic by at most
    the seed's data per clone, which the reserve is there for."""

    ratio: float
    space: StateSpace
    used: int  # what the work disks take now
    virtual: int  # their virtual sizes, with those made or grown by this pass so far

    @property
    def limit(self) -> int:
        return max(0, int(self.ratio * (self.space.free + self.used - reserve(self.space.size))))

    def take(self, more: int) -> Budget:
        return replace(self, virtual=self.virtual + more)

    def refusal(self, size: int, more: int) -> str | None:
        """None if `more` virtual bytes (a new disk of `size`, or its growth to it) fit; else why not."""
        over = self.virtual + more - self.limit
        if over <= 0:
            return None
        others = self.virtual - (size - more)  # a growing disk's own size is not another's
        return (f"diskSize {human(size)} does not fit the state file system under --disk-overcommit "
                f"{self.ratio:g}: {human(over)} over (work disks may add up to {self.room()}; "
                f"the others add up to {human(others)})")

    def room(self) -> str:
        """`69Gi: 70Gi free + 0 they take - 1Gi reserve`: the limit, and how it is made."""
        parts = (f"{human(self.space.free)} free + {human(self.used)} they take - "
                 f"{human(reserve(self.space.size))} reserve")
        return f"{human(self.limit)}: " + (parts if self.ratio == 1 else f"{self.ratio:g} x ({parts})")


def budget(desired: Desired, observed: DisksView) -> Budget | None:
    """The work disks there are, with the trashed ones coming back to their VMs in this pass (never
    refused: they hold their VMs' data); None when the file system was not observed."""
    if observed.space is None:
        return None
    retention = desired.policy.retain_removed
    back = [(entry.disk.size, entry.size) for vm in sorted(desired.vms)
            if (entry := observed.restorable(vm, retention)) is not None and entry.disk is not None]
    disks = observed.disks.values()
    return Budget(desired.policy.disk_overcommit, observed.space,
                  used=sum(d.allocated for d in disks) + sum(used for _, used in back),
                  virtual=sum(d.size for d in disks) + sum(size for size, _ in back))


def wanted(desired: Desired, observed: DisksView) -> Budget | None:
    """The budget with every disk the specs ask for taken (doctor's check): each VM's disk at its
    diskSize (a disk grows, never shrinks), beside the disks that no spec describes any more."""
    room = budget(desired, observed)
    for vm in desired.vms.values():
        if room is None or vm.image is None or vm.name in observed.broken_vms:
            continue
        disk = observed.disks.get(vm.name)
        if disk is not None or not observed.restorable(vm.name, desired.policy.retain_removed):
            room = room.take(max(0, vm.disk_size - (disk.size if disk else 0)))
    return room


def seed_size_for(content: int) -> int:
    """A base seed's size when its image names none: the content plus a fifth and 16 MiB of room,
    in whole MiB (the spec's `workSeed.size` default)."""
    return -(-(content + content // 5 + 16 * MiB) // MiB) * MiB


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g}Mi"


def plan_seeds(desired: Desired, observed: DisksView) -> tuple[list[Action], list[str]]:
    """Seeds to generate for current inputs, then seed files nothing uses any more."""
    actions: list[Action] = []
    for image in sorted(desired.images.values(), key=lambda i: i.name):
        state = observed.images[image.name]
        current = state.seeds.get(state.inputs) if state.inputs is not None else None
        if state.inputs is not None and (current is None or current.base is None) and state.inputs not in state.failed:
            actions.append(SeedGenerate(image, state.inputs))
    return actions + plan_seed_cleanup(desired, observed.images, observed.disks, observed.trash_seeds), []


def plan_seed_cleanup(desired: Desired, images: Mapping[str, ImageState], disks: Mapping[str, DiskState],
                      trashed: frozenset[Path] = frozenset()) -> list[Action]:
    """`trashed`: seed files backing a trashed qcow2 disk, which live as long as it does."""
    actions: list[Action] = []
    backing = {d.seed for d in disks.values() if d.seed is not None} | trashed
    for name, state in sorted(images.items()):
        if name not in desired.images and any(d.image == name for d in disks.values()):
            continue  # its VMs' disks still exist: they go first
        keep = _in_use(desired, state, name) | backing
        files = [f for seed in state.seeds.values() for f in seed.files() if f not in keep]
        if files or (name not in desired.images and not state.seeds):  # the last: only its record is left
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
    return set(state.seeds[ready].files())
