"""The host's half of `warmvm doctor`: the tools, KVM, QEMU's confinement, networking (per network:
its bridge's capacity, foreign devices with its pool prefix, a CIDR over a host route) and the
state directory (owner and mode, space, work disks' sizes against it, clone method, tmp leftovers, the
lock)."""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..adapters import ext4, qemu
from ..base import uids
from ..base.errors import WarmvmError
from ..base.model import Network
from ..base.units import human
from ..disks.plan import wanted
from ..statedir.safety import unsafe_reason
from .checks import FAIL, OK, WARN, Check, Context

BRIDGE_MAX_PORTS = 1023
CAP_NET_ADMIN = 12
MiB = 1 << 20

TOOLS: tuple[tuple[str, str, list[str] | None], ...] = (  # tool, the Debian package, how it tells its version
    ("qemu-system-x86_64", "qemu-system-x86", ["--version"]), ("qemu-img", "qemu-utils", ["--version"]),
    ("mkfs.ext4", "e2fsprogs", ["-V"]), ("debugfs", "e2fsprogs", ["-V"]), ("resize2fs", "e2fsprogs", []),
    ("e2fsck", "e2fsprogs", ["-V"]), ("ssh", "openssh-client", ["-V"]), ("ssh-keygen", "openssh-client", None),
    ("nft", "nftables", ["--version"]))


def tools(ctx: Context) -> Iterator[Check]:
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



def acceleration(ctx: Context) -> Iterator[Check]:
    if qemu.kvm_usable():
        yield Check("accel/kvm", OK, "KVM works: guests boot with -accel kvm -cpu host")
    else:
        yield Check("accel/kvm", WARN, "KVM is not usable here (no /dev/kvm, or no vmx/svm in the CPU): guests run "
                    "under TCG, emulated, a boot takes seconds instead of a fraction of one",
                    "a host with hardware virtualisation for speed; accel: auto works either way")



def _uid_block(instance: str | None) -> Check:
    """Each VM's QEMU runs as a uid of its own from this instance's block: no account may own one."""
    if instance is None:
        return Check("confine/uids", OK, "each VM's QEMU will run as a uid of its own (the block is chosen "
                     "with the instance identity, at the first reconcile)")
    block = uids.block(instance)
    named = sorted({f"user {p.pw_name}" for p in pwd.getpwall() if p.pw_uid in block}
                   | {f"group {g.gr_name}" for g in grp.getgrall() if g.gr_gid in block})
    where = f"{block.start}-{block.stop - 1}"
    if named:
        return Check("confine/uids", FAIL, f"the uids QEMU runs as ({where}) are not reserved: {', '.join(named)} "
                     "owns one, and a guest that escapes into its QEMU would act as it",
                     "remove or renumber that account")
    return Check("confine/uids", OK, f"each VM's QEMU runs as a uid of its own, from {where} (no account owns one)")


def confinement(ctx: Context) -> Iterator[Check]:
    yield _uid_block(ctx.observed.net.instance)
    v2 = any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in
             Path("/proc/self/mounts").read_text().splitlines() if len(line.split()) > 2)
    if v2:
        yield Check("confine/cgroup", OK, "cgroup v2 is mounted at /sys/fs/cgroup")
    else:
        yield Check("confine/cgroup", WARN, "cgroup v1 (or hybrid): memory and pid limits per VM are not applied",
                    "a host with the unified cgroup v2 hierarchy")



def networking(ctx: Context) -> Iterator[Check]:
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



def state(ctx: Context) -> Iterator[Check]:
    root = ctx.layout.root
    if not root.is_dir():
        yield Check("state/dir", WARN, f"{root} does not exist yet", "warmvm reconcile makes it")
        yield from _disk_room(ctx)  # on the file system it will be made on
        return
    unsafe = unsafe_reason(root)
    st = root.stat()
    fix = "chown root and chmod go-w on it and every directory above" if unsafe else ""
    yield Check("state/dir", FAIL if unsafe else OK,
                unsafe or f"{root}: owner uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}", fix)
    yield from _space(ctx)
    yield from _disk_room(ctx)
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



def _disk_room(ctx: Context) -> Iterator[Check]:
    """The planner's budget with every disk the specs ask for: what reconcile would refuse, said now."""
    room = wanted(ctx.desired, ctx.observed)
    if room is None:
        return
    over, holds = room.virtual - room.limit, replace(room, ratio=1.0).limit
    sizes = f"work disks add up to {human(room.virtual)}; they may add up to {room.room()}"
    if over > 0:
        yield Check("state/disks", FAIL, f"{sizes}: {human(over)} over; reconcile refuses the disks that do not fit",
                    "smaller diskSize or fewer VMs, more space, or --disk-overcommit above 1 (guests filling their "
                    "disks could then fill the file system)")
    elif room.virtual > holds:
        yield Check("state/disks", WARN, f"{sizes}; guests filling their disks would fill the file system "
                    f"({human(room.virtual - holds)} over what it holds)", "more space, or fewer or smaller disks")
    else:
        yield Check("state/disks", OK, sizes)


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
