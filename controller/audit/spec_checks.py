"""The specs' half of `warmvm doctor`: per image its kernel, rootfs, snapshots (with --deep, their
digests) and work seed (with --deep, e2fsck); per VM its disk against its record; spec errors and
records that cannot be read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..adapters import ext4
from ..base.errors import WarmvmError
from ..disks.observe import ImageFiles, kernel_format
from ..statedir.store import sha256
from .checks import FAIL, OK, WARN, Check, Context


def images(ctx: Context) -> Iterator[Check]:
    files = ImageFiles()
    for image in sorted(ctx.desired.images.values(), key=lambda i: i.name):
        name = f"image/{image.name}"
        kind = kernel_format(image.kernel)
        yield Check(f"{name}/kernel", OK if kind else FAIL,
                    f"{image.kernel}: " + (f"a {kind}" if kind else "neither a bzImage nor a PVH ELF"))
        is_ext4 = files.is_ext4(image.rootfs)
        yield Check(f"{name}/rootfs", OK if is_ext4 else FAIL,
                    f"{image.rootfs}: " + ("ext4" if is_ext4 else "not ext4"))
        yield from _snapshots(ctx, image.name, name)
        if image.seed is None:
            yield Check(f"{name}/seed", OK, "workSeed: none: every disk is built from scratch (slow path, by choice)")
            continue
        yield from _seed(ctx, image.name, name)



def _snapshots(ctx: Context, image: str, name: str) -> Iterator[Check]:
    """Each shape VMs of the image want restored: its snapshot ready and current (with --deep, its
    digest as recorded), or why its VMs boot cold."""
    snapshots = ctx.observed.snapshots
    for (owner, shape), fingerprint in sorted(snapshots.wanted.items()):
        if owner != image:
            continue
        check, ready = f"{name}/snapshot/{shape}", snapshots.ready(image, shape)
        if ready is None:
            failed = snapshots.failed.get((image, fingerprint or ""))
            fix = (f"fix the cause, then remove {ctx.layout.snapshot_failures(image)}: it is tried again" if failed
                   else "any reconcile makes it once no VM is being provisioned")
            yield Check(check, WARN, f"no snapshot ({failed or 'not made yet'}): VMs with boot: restore of this "
                                     "shape boot cold", fix)
            continue
        yield Check(check, OK, f"snapshot {ready.record.fingerprint} ready and current "
                               f"({ready.record.size >> 20} MiB, QEMU {ready.record.qemu})")
        if ctx.deep:
            intact = sha256(ready.path) == ready.record.sha256
            yield Check(f"{check}/digest", OK if intact else FAIL,
                        f"{ready.path.name}: " + ("its digest is the one recorded" if intact else "corrupt"),
                        "" if intact else "a restore from it falls back to a cold boot and deletes it")



def _seed(ctx: Context, image: str, name: str) -> Iterator[Check]:
    state = ctx.observed.images.get(image)
    ready = state.ready() if state else None
    if state is None or ready is None:
        why = f"generation failed: {state.failed[state.inputs]}" if state and state.inputs in state.failed else \
            "not generated yet"
        yield Check(f"{name}/seed", WARN, f"no work seed ({why}): the next VM's disk is built from scratch",
                    "warmvm seed, or any reconcile, generates it")
        return
    if ready != state.inputs:
        yield Check(f"{name}/seed", WARN, f"the seed is stale (its inputs changed since {ready}): new VMs clone the "
                    "old one until the new one is generated", "warmvm seed, or any reconcile")
    else:
        yield Check(f"{name}/seed", OK, f"seed {ready} ready and current ({len(state.seeds[ready].sized)} sized)")
    base = state.seeds[ready].base
    if ctx.deep and base is not None:
        try:
            ext4.fsck(base)
            yield Check(f"{name}/seed-fsck", OK, f"{base.name}: e2fsck -fn clean")
        except WarmvmError as e:
            yield Check(f"{name}/seed-fsck", FAIL, str(e), "remove the seed file; the next reconcile makes it again")



def vms(ctx: Context) -> Iterator[Check]:
    for error in ctx.desired.errors:
        yield Check("specs", FAIL, str(error), "fix the spec file")
    for vm in sorted(ctx.desired.vms.values(), key=lambda v: v.name):
        disk = ctx.observed.disks.get(vm.name)
        if disk is None:
            yield Check(f"vm/{vm.name}", OK, f"network {vm.network}, image {vm.image or '-'}; no disk yet")
            continue
        size = _disk_size(disk.path, disk.format)
        if size != disk.size:
            yield Check(f"vm/{vm.name}/disk", FAIL, f"{disk.path}: {size} bytes on disk, {disk.size} recorded",
                        "inspect the disk; its record (disk.json) no longer describes it")
        else:
            yield Check(f"vm/{vm.name}/disk", OK, f"{disk.format} {disk.size >> 20} MiB, as recorded ({disk.taken})")
    for key, why in sorted(ctx.observed.broken.items()):
        yield Check(key, FAIL, why, "repair or remove the record; warmvm leaves that VM alone until then")



def _disk_size(path: Path, fmt: str) -> int | None:
    """The size the guest sees; a qcow2 overlay's header is written by QEMU, not by its guest."""
    try:
        return ext4.virtual_size(path) if fmt == "qcow2" else path.stat().st_size
    except (OSError, WarmvmError):
        return None
