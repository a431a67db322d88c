"""Snapshot planning: a snapshot per image and shape that VMs with `boot: restore` use. Pure.

Made like a work seed, once per set of inputs (fingerprint: kernel, initrd,
rootfs, the template's QEMU command line, QEMU itself), in the warm phase,
after the VMs of the pass started; a failed generation is not retried until
the inputs change. Unlike a seed, an older snapshot is never used: a guest
restored from other inputs would not be the VM its spec describes. A
snapshot is freed as soon as nothing uses it: no VM in the specs asks to be
restored from its image, shape and inputs (a stopped VM that asks keeps it).
"""

from __future__ import annotations

from ..base.actions import Action
from ..base.kinds import Accel, BootMode
from ..base.model import Desired
from .actions import SnapshotDelete, SnapshotGenerate
from .state import Shape, Snapshots, SnapshotsView


def wanted_shapes(desired: Desired) -> set[tuple[str, Shape]]:
    """The (image, shape) of every VM that asks to be restored."""
    return {(vm.image, Shape(vm.memory, vm.vcpus, vm.accel)) for vm in desired.vms.values()
            if vm.boot == BootMode.RESTORE and vm.image is not None}


def plan_snapshots(desired: Desired, observed: SnapshotsView) -> tuple[list[Action], list[str]]:
    snapshots: Snapshots = observed.snapshots
    actions: list[Action] = []
    for (image, shape), fingerprint in sorted(snapshots.wanted.items()):
        if fingerprint is None or image not in desired.images or (image, fingerprint) in snapshots.failed:
            continue  # a failure is shown by `get images`; its VMs boot cold
        accel = observed.host.accel(shape.accel)
        if snapshots.ready(image, shape) is None and accel is not None:
            tsc_khz = observed.host.tsc_khz if accel == Accel.TCG else None
            actions.append(SnapshotGenerate(desired.images[image], shape, fingerprint, accel, tsc_khz))
    wanted = {(image, fp) for (image, _), fp in snapshots.wanted.items()}
    for (image, fingerprint), files in sorted(snapshots.on_disk.items()):
        if (image, fingerprint) not in wanted:
            actions.append(SnapshotDelete(image, fingerprint, files.files))
    for image, fingerprint in sorted(snapshots.failed):  # the record of a failure nothing can want again
        if (image, fingerprint) not in wanted and (image, fingerprint) not in snapshots.on_disk:
            actions.append(SnapshotDelete(image, fingerprint, ()))
    return actions, []
