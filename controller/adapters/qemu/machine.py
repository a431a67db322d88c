"""A QEMU machine and its command line: every option warmvm passes, built in one place.

Every option value that comes from a path or a name is escaped (a comma
starts a new option in QEMU's parser); disks are -blockdev nodes with their
recorded format. The snapshot layout (a template, and every copy restored
from it) is made by one function, `snapshot_layout`, so that the two can
never disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface
from pathlib import Path

from ...base.errors import PermanentError
from ...base.kinds import Accel, DiskFormat
from ...base.model import Image
from ...statedir.layout import VmFiles

QEMU = "qemu-system-x86_64"
# spawn, setuid binaries, the scheduler and obsolete calls denied; elevating privileges cannot be denied
# as well in QEMU 7.2, since its filter is installed before -runas drops root (it would kill QEMU).
# kill() stays allowed (QEMU signals its own threads): what keeps one QEMU from signalling another is
# that each runs as a uid of its own (base/uids.py)
SANDBOX = "on,obsolete=deny,spawn=deny,resourcecontrol=deny"
IDENTITY_ENTRY = "opt/warmvm/identity"
CHANNEL = "org.warmvm.control"  # the control channel's virtio-serial port, as the guest's agent finds it
TEMPLATE_MAC = "52:54:00:00:00:01"  # overwritten by every copy's own (identity.c sets it)


@dataclass(frozen=True, kw_only=True)
class Machine:
    """Everything one QEMU invocation needs."""

    name: str
    kernel: Path
    initrd: Path | None
    rootfs: Path
    disk: Path
    disk_format: DiskFormat  # as recorded when the disk was made
    backing: Path | None  # a qcow2 disk's seed, named here: never read from the disk's own header
    tap: str | int  # the TAP's name, or an open TAP file descriptor handed to QEMU (a template's)
    mac: str
    address: IPv4Interface | None  # the guest's address with its prefix length (None: a template)
    gateway: str | None
    vcpus: int
    memory: int
    accel: Accel  # as resolved: kvm | tcg
    host_key: Path | None = None  # the VM's own SSH host key (dropbear's format), handed over through fw_cfg
    tsc_khz: int | None = None  # the host's TSC rate, which a TCG guest needs told (see host_tsc_khz)
    uid: int | None = None  # the VM's own uid (and gid), which QEMU drops to once its files are open
    # The snapshot layout (a template, and every copy restored from it): no identity on the kernel
    # command line, which is part of the saved state, but one fixed-size fw_cfg entry, which is not
    identity: Path | None = None
    incoming: bool = False  # waits for a saved state (QMP migrate-incoming) instead of booting


def snapshot_layout(m: Machine, *, identity: Path, tsc_khz: int | None, incoming: bool) -> Machine:
    """`m` in the snapshot layout, the one function that builds it for a template (booted to be saved)
    and for every copy restored from it (`incoming`: it waits for the saved state), so that the devices
    saved and the devices restored cannot disagree: no identity on the kernel command line, which is
    part of the saved state, but one fixed-size fw_cfg entry, which is not; the template's TSC rate."""
    return replace(m, identity=identity, host_key=None, tsc_khz=tsc_khz, incoming=incoming)


def template(image: Image, *, vcpus: int, memory: int, accel: Accel, tsc_khz: int | None, work: Path,
             identity: Path, tap: int | str, uid: int | None = None) -> Machine:
    """A template VM of `image`: an empty raw work disk, a TAP of its own, a MAC every copy replaces."""
    machine = Machine(name=f"template-{image.name}", kernel=image.kernel, initrd=image.initrd, rootfs=image.rootfs,
                      disk=work, disk_format=DiskFormat.RAW, backing=None, tap=tap, mac=TEMPLATE_MAC, address=None,
                      gateway=None, vcpus=vcpus, memory=memory, accel=accel, uid=uid)
    return snapshot_layout(machine, identity=identity, tsc_khz=tsc_khz, incoming=False)


def mac_for(name: str) -> str:
    """A stable, locally administered MAC derived from the VM's name."""
    digest = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def qemu_argv(m: Machine, files: VmFiles) -> list[str]:
    """Every option value that comes from a path or a name is escaped (a comma starts a new option in
    QEMU's parser), disks are -blockdev nodes in JSON with their recorded format, so that QEMU never
    guesses one from content a guest wrote, and a qcow2 disk's backing file is the one named here."""
    cpu = ["-accel", "kvm", "-cpu", "host"] if m.accel == Accel.KVM else ["-accel", "tcg", "-cpu", "max"]
    netdev = f"fd={m.tap}" if isinstance(m.tap, int) else f"ifname={escape(m.tap)},script=no,downscript=no"
    if m.identity is not None:
        fw_cfg = ["-fw_cfg", f"name={IDENTITY_ENTRY},file={escape(m.identity)}"]
    else:
        fw_cfg = ["-fw_cfg", f"name=opt/warmvm/hostkey,file={escape(m.host_key)}"] if m.host_key else []
    argv = [QEMU, "-name", f"warmvm-{m.name}", "-M", "microvm,rtc=on", *cpu,
            "-m", str(m.memory >> 20), "-smp", str(m.vcpus), "-nodefaults", "-no-user-config",
            "-display", "none",
            "-chardev", f"pipe,id=console,path={escape(files.console_pipe)}", "-serial", "chardev:console",
            "-qmp", f"unix:{escape(files.qmp)},server=on,wait=off",
            "-kernel", str(m.kernel), *(["-initrd", str(m.initrd)] if m.initrd else []), "-append", kernel_cmdline(m),
            *_blockdev("root", m.rootfs, "raw", read_only=True),
            "-device", "virtio-blk-device,drive=root,serial=warmvm-root",
            *_work_disk(m),
            "-device", "virtio-blk-device,drive=work,serial=warmvm-work",
            "-netdev", f"tap,id=n0,{netdev}",
            "-device", f"virtio-net-device,netdev=n0,mac={m.mac}",
            *_channel(files),
            *fw_cfg,
            "-pidfile", str(files.pidfile), "-sandbox", SANDBOX]
    return argv + (["-runas", f"{m.uid}:{m.uid}"] if m.uid else []) + (["-incoming", "defer"] if m.incoming else [])


def _channel(files: VmFiles) -> list[str]:
    """The control channel: a virtio-serial port on a UNIX socket QEMU listens on (one client at a
    time), the guest's agent at its other end. In every layout, template and copies alike: a restored
    copy has the devices its template was saved with."""
    return ["-device", "virtio-serial-device,max_ports=2",
            "-chardev", f"socket,id=ctl,path={escape(files.ctl)},server=on,wait=off",
            "-device", f"virtserialport,chardev=ctl,name={CHANNEL}"]


def inputs_of(argv: list[str]) -> str:
    """What a saved state was made on: the QEMU command line (but the kernel's, read once at boot, and
    whether it waits for a state) and the version of each file it reads whole (kernel, initrd, the
    read-only root), so that a state is never resumed on other devices or another root file system."""
    kept, files, skip = [], [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("-append", "-incoming"):
            skip = True
            continue
        kept.append(arg)
        if i and argv[i - 1] in ("-kernel", "-initrd"):
            files.append(arg)
        elif arg.startswith("{") and '"read-only": true' in arg and '"driver": "file"' in arg:
            files.append(json.loads(arg)["filename"])
    versions = []
    for path in files:
        try:
            st = os.stat(path)
            versions.append([path, st.st_size, st.st_mtime_ns, st.st_ino])
        except OSError:
            versions.append([path, None])
    return hashlib.sha256(json.dumps([kept, versions]).encode()).hexdigest()[:16]


def kernel_cmdline(m: Machine) -> str:
    # cryptomgr.notests: the kernel's crypto self-tests cost 0.5 s of a TCG boot and test nothing of ours
    # warmvm.debug=1: the guest marks its boot stages on the console (a few lines; the boot timeline)
    if m.identity is not None:
        append = "console=ttyS0 quiet cryptomgr.notests warmvm.template=1 warmvm.debug=1"
    else:
        append = (f"console=ttyS0 quiet cryptomgr.notests warmvm.ip={m.address} warmvm.gw={m.gateway} "
                  f"warmvm.hostname={m.name} warmvm.debug=1")
    if m.accel == Accel.TCG and m.tsc_khz:
        append += f" tsc_early_khz={m.tsc_khz}"
    return append


def escape(value: object) -> str:
    """A value inside a QEMU key=value option: commas doubled."""
    return str(value).replace(",", ",,")


def _blockdev(name: str, path: Path, fmt: str, read_only: bool = False, backing: str | None = None) -> list[str]:
    protocol: dict[str, object] = {"driver": "file", "filename": str(path), "node-name": f"{name}-file"}
    node: dict[str, object] = {"driver": fmt, "file": f"{name}-file", "node-name": name}
    if read_only:
        protocol["read-only"] = node["read-only"] = True
    if fmt == "qcow2":
        node["backing"] = backing  # None: no backing at all, whatever the header says
    return ["-blockdev", json.dumps(protocol), "-blockdev", json.dumps(node)]


def _work_disk(m: Machine) -> list[str]:
    if m.disk_format == "raw":
        return _blockdev("work", m.disk, "raw")
    if m.disk_format != "qcow2":
        raise PermanentError(f"{m.disk}: recorded format {m.disk_format!r} is not one warmvm makes")
    seed = _blockdev("seed", m.backing, "raw", read_only=True) if m.backing else []
    return seed + _blockdev("work", m.disk, "qcow2", backing="seed" if m.backing else None)
