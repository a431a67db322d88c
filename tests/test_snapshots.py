"""Snapshot pieces that need no QEMU: the identity a restored copy is given, the record's checks,
and what the fingerprint covers (real files, stat data)."""

from __future__ import annotations

import os
import shutil
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from controller.adapters.qemu import IDENTITY_SIZE, QEMU, TEMPLATE_IDENTITY, Identity
from controller.base.errors import PermanentError
from controller.base.kinds import Accel
from controller.base.model import HostCaps, Image, Source
from controller.snapshots.observe import fingerprint
from controller.snapshots.state import FORMAT, Shape, SnapshotRecord


def identity(key: bytes = b"\x00\x00\x00\x0bssh-ed25519" + bytes(68)) -> Identity:
    return Identity("vm-a", IPv4Interface("10.88.0.2/24"), "10.88.0.1", "52:54:00:aa:bb:cc", key)


def test_each_identity_entry_has_the_fixed_size_and_fresh_entropy() -> None:
    first, second = identity().entry(), identity().entry()
    assert len(first) == len(second) == len(TEMPLATE_IDENTITY) == IDENTITY_SIZE
    assert first.startswith(b"warmvm-identity\n") and TEMPLATE_IDENTITY.startswith(b"warmvm-template\n")
    fields = dict(line.split("=", 1) for line in first.rstrip(b"\0").decode().splitlines()[1:])
    assert fields["hostname"] == "vm-a" and fields["ip"] == "10.88.0.2/24" and fields["mac"] == "52:54:00:aa:bb:cc"
    assert len(bytes.fromhex(fields["seed"])) == 64
    seeds = {dict(line.split("=", 1) for line in e.rstrip(b"\0").decode().splitlines()[1:])["seed"]
             for e in (first, second)}
    assert len(seeds) == 2, "every start draws new entropy for the guest's RNG"


def test_an_identity_that_does_not_fit_is_refused() -> None:
    with pytest.raises(PermanentError, match="does not fit"):
        identity(bytes(IDENTITY_SIZE)).entry()


def record(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {"image": "demo", "fingerprint": "a" * 16, "memory": 256 << 20, "vcpus": 1,
                               "accel": "tcg", "tsc_khz": 2300000, "size": 1 << 26, "sha256": "0" * 64,
                               "generate_ms": 2500.0, "created": 1.0, "qemu": "7.2.19", "format": FORMAT}
    return data | changes


@pytest.mark.parametrize("changes", [{"format": "qcow2"}, {"accel": "xen"}, {"sha256": "abc"}, {"size": "big"}])
def test_a_snapshot_record_of_another_format_or_shape_is_not_one(changes: dict[str, object]) -> None:
    assert SnapshotRecord.from_dict(record(), "r").image == "demo"
    with pytest.raises(PermanentError, match="not a snapshot record"):
        SnapshotRecord.from_dict(record(**changes), "r")


def test_the_fingerprint_follows_the_inputs_and_the_shape(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("vmlinux", "initrd.img", "rootfs.ext4")}
    for path in files.values():
        path.write_bytes(b"x")
    image = Image(name="demo", kernel=files["vmlinux"], initrd=files["initrd.img"], rootfs=files["rootfs.ext4"],
                  seed=None, default=True, source=Source("f", 1))
    host, shape = HostCaps(qemu=shutil.which(QEMU)), Shape(256 << 20, 1, Accel.TCG)
    first = fingerprint(image, shape, host)
    assert first is not None and first == fingerprint(image, shape, host)
    assert fingerprint(image, Shape(512 << 20, 1, Accel.TCG), host) != first
    assert fingerprint(image, Shape(256 << 20, 2, Accel.TCG), host) != first
    assert fingerprint(image, Shape(256 << 20, 1, Accel.KVM), host) is None, "no KVM here: no such VM starts"
    os.utime(files["initrd.img"], ns=(1, 1))  # a new initrd, as far as stat data can tell
    assert fingerprint(image, shape, host) != first
    files["rootfs.ext4"].unlink()
    assert fingerprint(image, shape, host) is None, "a missing input: no snapshot at all"
