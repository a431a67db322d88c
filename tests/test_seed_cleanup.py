"""Seed cleanup (pure): what is kept and what is freed."""

from __future__ import annotations

from pathlib import Path

from controller.base.kinds import DiskFormat, Taken
from controller.base.model import Desired, Image, Source, WorkSeed
from controller.disks.actions import SeedDelete
from controller.disks.plan import plan_seed_cleanup
from controller.disks.state import DiskRecord, DiskState, ImageState, SeedFiles

OLD, NEW = "a" * 16, "b" * 16


def image(seed: bool = True) -> Image:
    work_seed = WorkSeed(from_rootfs="/root", from_dir=None, size=None) if seed else None
    return Image(name="demo", kernel=Path("/k"), initrd=None, rootfs=Path("/r"), seed=work_seed, default=True,
                 source=Source("x", 1))


def files(fp: str, *sizes: int) -> SeedFiles:
    return SeedFiles(Path(f"/s/seed-{fp}.ext4"), 1 << 20, 1.0, {n: Path(f"/s/seed-{fp}-{n}.ext4") for n in sizes})


def deleted(desired: Desired, state: ImageState, disks: dict[str, DiskState] | None = None) -> set[Path]:
    actions = plan_seed_cleanup(desired, {"demo": state}, disks or {})
    return {f for a in actions if isinstance(a, SeedDelete) for f in a.files}


def test_the_ready_seed_and_its_sizes_are_kept_the_stale_one_freed() -> None:
    state = ImageState("demo", NEW, {OLD: files(OLD, 64), NEW: files(NEW, 64, 128)}, {})
    gone = deleted(Desired(images={"demo": image()}), state)
    assert gone == {Path(f"/s/seed-{OLD}.ext4"), Path(f"/s/seed-{OLD}-64.ext4")}


def test_a_stale_seed_stays_while_a_qcow2_disk_is_backed_by_it() -> None:
    state = ImageState("demo", NEW, {OLD: files(OLD, 64), NEW: files(NEW)}, {})
    record = DiskRecord(image="demo", size=64, taken=Taken.SEED_QCOW2, format=DiskFormat.QCOW2,
                        seed=f"images/demo/seed-{OLD}-64.ext4", created=1.0)
    disk = DiskState("vm-a", Path("/d"), record, Path(f"/s/seed-{OLD}-64.ext4"))
    assert deleted(Desired(images={"demo": image()}), state, {"vm-a": disk}) == {Path(f"/s/seed-{OLD}.ext4")}


def test_an_image_switched_to_no_seed_frees_its_seeds() -> None:
    state = ImageState("demo", None, {OLD: files(OLD, 64)}, {})
    assert len(deleted(Desired(images={"demo": image(seed=False)}), state)) == 2


def test_a_removed_image_keeps_its_seeds_until_its_vms_disks_are_gone() -> None:
    state = ImageState("demo", None, {OLD: files(OLD)}, {})
    disk = DiskState("vm-a", Path("/d"), DiskRecord(image="demo", size=64, taken=Taken.SEED_REFLINK,
                                                   format=DiskFormat.RAW, seed=None, created=1.0), None)
    assert deleted(Desired(), state, {"vm-a": disk}) == set()
    assert deleted(Desired(), state) == {Path(f"/s/seed-{OLD}.ext4")}
