"""`warmvm doctor`: is this host ready for these specs? A preflight in the spirit of libvirt's
virt-host-validate: each check has a name, a status (ok, warn, fail), a one-line finding and, when not
ok, what to do. It changes nothing on the host (the clone-method probe writes and removes one file in
the state's tmp area, as reconcile does).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..adapters import ext4, qemu
from ..base.errors import WarmvmError
from ..base.model import Desired, Network
from ..disks.observe import ImageFiles, kernel_format
from ..engine.state import Observed
from ..statedir.layout import Layout
from ..statedir.safety import unsafe_reason
from ..statedir.store import sha256

OK, WARN, FAIL = "ok", "warn", "fail"
BRIDGE_MAX_PORTS = 1023
CAP_NET_ADMIN = 12
MiB = 1 << 20


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    finding: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    desired: Desired
    observed: Observed
    layout: Layout
    deep: bool


TOOLS: tuple[tuple[str, str, list[str] | None], ...] = (  # tool, the Debian package, how it tells its version
    ("qemu-system-x86_64", "qemu-system-x86", ["--version"]), ("qemu-img", "qemu-utils", ["--version"]),
    ("mkfs.ext4", "e2fsprogs", ["-V"]), ("debugfs", "e2fsprogs", ["-V"]), ("resize2fs", "e2fsprogs", []),
    ("e2fsck", "e2fsprogs", ["-V"]), ("ssh", "openssh-client", ["-V"]), ("ssh-keygen", "openssh-client", None),
    ("nft", "nftables", ["--version"]))


def doctor(ctx: Context) -> list[Check]:
    checks: list[Check] = []
    for section in (_tools, _acceleration, _confinement, _networking, _state, _images, _vms):
        checks += section(ctx)
    return checks


def _tools(ctx: Context) -> Iterator[Check]:
    for tool, package, version_args in TOOLS:
        path = shutil.which(tool)
        if path is None:
            yield Check(f"tool/{tool}", FAIL, "not found", f"apt-get install {package} (make setup does)")
            continue
        version = _version(path, version_args) if version_args is not None else ""
        yield Check(f"tool/{tool}", OK, f"{path}{' ' + version if version else ''}")
        if tool == "mkfs.ext4":
            m = re.search(r"(\d+)\.(\d+)", version)
            if m and (int(m.group(1)), int(m.group(2))) < (1, 43):
                yield Check("tool/mkfs.ext4 -d", FAIL, f"{version}: no -d (populating without a mount)",
                            "e2fsprogs 1.43 or later (Debian 12 has 1.47)")


def _version(path: str, args: list[str]) -> str:
    try:
        out = subprocess.run([path, *args], capture_output=True, text=True, timeout=5, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return lines[0][:80] if lines else ""


def _acceleration(ctx: Context) -> Iterator[Check]:
    if qemu.kvm_usable():
        yield Check("accel/kvm", OK, "KVM works: guests boot with -accel kvm -cpu host")
    else:
        yield Check("accel/kvm", WARN, "KVM is not usable here (no /dev/kvm, or no vmx/svm in the CPU): guests run "
                    "under TCG, emulated, a boot takes seconds instead of a fraction of one",
                    "a host with hardware virtualisation for speed; accel: auto works either way")


def _confinement(ctx: Context) -> Iterator[Check]:
    try:
        pw = pwd.getpwnam(qemu.QEMU_USER)
        yield Check("confine/user", OK, f"QEMU drops to {qemu.QEMU_USER} (uid {pw.pw_uid}) under -sandbox")
    except KeyError:
        yield Check("confine/user", FAIL, f"no user {qemu.QEMU_USER}: VMs cannot start confined",
                    "make setup (hack/install-deps.sh adds it)")
    v2 = any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in
             Path("/proc/self/mounts").read_text().splitlines() if len(line.split()) > 2)
    if v2:
        yield Check("confine/cgroup", OK, "cgroup v2 is mounted at /sys/fs/cgroup")
    else:
        yield Check("confine/cgroup", WARN, "cgroup v1 (or hybrid): memory and pid limits per VM are not applied",
                    "a host with the unified cgroup v2 hierarchy")


def _networking(ctx: Context) -> Iterator[Check]:
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
        yield Check("net/tun", OK, "/dev/net/tun opens")
    except OSError as e:
        yield Check("net/tun", FAIL, f"/dev/net/tun: {e.strerror}", "modprobe tun; run as root")
    caps = next((ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("CapEff")), "")
    admin = bool(int(caps.split()[1], 16) >> CAP_NET_ADMIN & 1) if caps else False
    yield Check("net/cap_net_admin", OK if admin else FAIL, "CAP_NET_ADMIN " + ("held" if admin else "missing"),
                "" if admin else "run warmvm as root")
    release = os.uname().release
    modules = Path(f"/lib/modules/{release}/kernel/net/bridge")
    bridge = Path("/sys/module/bridge").exists() or any(modules.glob("bridge.ko*"))
    yield Check("net/bridge", OK if bridge else FAIL, "bridge support " + ("present" if bridge else "missing"),
                "" if bridge else "a kernel with CONFIG_BRIDGE")
    routes = _routes()
    for net in sorted(ctx.desired.networks.values(), key=lambda n: n.name):
        yield from _network(ctx, net, routes)


def _network(ctx: Context, net: Network, routes: list[tuple[str, ipaddress.IPv4Network]]) -> Iterator[Check]:
    vms = sum(1 for vm in ctx.desired.vms.values() if vm.network == net.name)
    used = net.pool_size + vms
    yield Check(f"network/{net.name}/capacity", OK if used <= BRIDGE_MAX_PORTS else FAIL,
                f"{net.pool_size} idle TAPs + {vms} VMs of {BRIDGE_MAX_PORTS} ports on {net.bridge}",
                "" if used <= BRIDGE_MAX_PORTS else "a smaller pool, or another network")
    ours = {t.name for t in ctx.observed.net.taps}
    foreign = sorted(n for n in ctx.observed.net.names if n.startswith(net.pool_prefix) and n not in ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        yield Check(f"network/{net.name}/prefix", WARN, f"{len(foreign)} devices carry the pool prefix "
                    f"{net.pool_prefix!r} without our mark ({shown}): "
                    "skipped, never used or deleted; new TAPs take other indices",
                    "another tapPool.prefix, or remove those devices if they are stale")
    else:
        yield Check(f"network/{net.name}/prefix", OK, f"no foreign device carries {net.pool_prefix!r}")
    clash = [f"{cidr} via {dev}" for dev, cidr in routes if dev != net.bridge and cidr.overlaps(net.cidr)]
    if clash:
        yield Check(f"network/{net.name}/cidr", FAIL, f"{net.cidr} overlaps routes the host has: {', '.join(clash)}",
                    "choose a CIDR no host route covers")
    else:
        yield Check(f"network/{net.name}/cidr", OK, f"{net.cidr} overlaps no host route")


def _routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    out = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest, mask = (ipaddress.IPv4Address(struct.pack("<I", int(v, 16))) for v in (fields[1], fields[7]))
        if int(mask) == 0:
            continue  # the default route overlaps everything and decides nothing here
        out.append((fields[0], ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)))
    return out


def _state(ctx: Context) -> Iterator[Check]:
    root = ctx.layout.root
    if not root.is_dir():
        yield Check("state/dir", WARN, f"{root} does not exist yet", "warmvm reconcile makes it")
        return
    unsafe = unsafe_reason(root)
    st = root.stat()
    fix = "chown root and chmod go-w on it and every directory above" if unsafe else ""
    yield Check("state/dir", FAIL if unsafe else OK,
                unsafe or f"{root}: owner uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}", fix)
    yield from _space(ctx)
    try:
        methods = [m.value for m in ext4.detect_clone_methods(ctx.layout.tmp if ctx.layout.tmp.is_dir() else root)]
    except WarmvmError as e:
        methods = ["sparse"]
        yield Check("state/clone", WARN, str(e))
    costs = {"reflink": "a disk is a shared-extent copy: about 1 ms, no space until written",
             "qcow2": "a disk is a qcow2 overlay on the sized seed: about 10 ms, little space",
             "sparse": "a disk is a full sparse copy of the sized seed: slow and takes the seed's data each"}
    best = methods[0]
    yield Check("state/clone", OK if best != "sparse" else WARN, f"{best}: {costs[best]}",
                "" if best == "reflink" else "a state directory on XFS (reflink=1) or btrfs clones by reflink")
    stale = sorted(p.name for p in ctx.layout.tmp.iterdir()) if ctx.layout.tmp.is_dir() else []
    finding = f"{len(stale)} leftovers in {ctx.layout.tmp} ({', '.join(stale[:3])})" if stale else "tmp area empty"
    yield Check("state/tmp", WARN if stale else OK, finding, "the next reconcile removes them" if stale else "")
    holder = _lock_holder(ctx.layout.lock)
    yield Check("state/lock", OK, f"held by pid {holder}" if holder else "free")


def _space(ctx: Context) -> Iterator[Check]:
    need = 0
    for image in ctx.desired.images.values():
        if image.seed is not None and image.seed.from_dir is not None:
            content = ext4.content_size(image.seed.from_dir)
        else:
            content = image.rootfs.stat().st_blocks * 512 if image.rootfs.exists() else 0
        sizes = {vm.disk_size for vm in ctx.desired.vms.values() if vm.image == image.name}
        new_vms = sum(1 for vm in ctx.desired.vms.values()
                      if vm.image == image.name and vm.name not in ctx.observed.disks)
        need += content * (1 + len(sizes)) + new_vms * (content if ctx.observed.clone_method == "sparse" else MiB)
    fs = os.statvfs(ctx.layout.root)
    free = fs.f_bavail * fs.f_frsize
    status = FAIL if free < need else WARN if free < 2 * need else OK
    yield Check("state/space", status, f"{free // MiB} MiB free; the specs' seeds and new disks need about "
                f"{need // MiB} MiB", "" if status == OK else "free space, or a larger file system for the state")


def _lock_holder(lock: Path) -> int | None:
    try:
        st = lock.stat()
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode = f":{st.st_ino}"
    for line in locks:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(inode) and \
                int(fields[5].split(":")[0], 16) == os.major(st.st_dev) and \
                int(fields[5].split(":")[1], 16) == os.minor(st.st_dev):
            return int(fields[4])
    return None


def _images(ctx: Context) -> Iterator[Check]:
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


def _vms(ctx: Context) -> Iterator[Check]:
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


def table(checks: list[Check]) -> str:
    width = max([len(c.name) for c in checks] + [5])
    lines = [f"{'CHECK':<{width}}  STATUS  FINDING"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status.upper():<6}  {c.finding}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<{width}}          fix: {c.fix}")
    fails, warns = (sum(1 for c in checks if c.status == s) for s in (FAIL, WARN))
    lines.append(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines)

