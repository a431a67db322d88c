"""QEMU processes for the VM driver: started detached, recognised, stopped.

QEMU is spawned in a session of its own with its output in the VM's
directory, and outlives the controller. Start returns as soon as QEMU is
exec'd: its own initialisation (70-80 ms here with -daemonize waiting for it)
is part of the guest's boot, and a QEMU that fails is seen by the readiness
wait, with qemu.log's last line as the reason. Its pid file, QMP socket
(0600) and serial log live in the VM's state directory. A pid alone is no
proof (pids are reused), so a process is ours only if its command line
carries this VM's own pid-file path. Stopping asks the guest over QMP
(system_powerdown), then kills after a timeout.

QMP is spoken directly (a JSON line protocol of three messages here) rather
than through the asyncio qemu.qmp package, which would be the only asyncio in
the controller.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import struct
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from ..core.errors import PermanentError
from ..statedir.layout import Layout, VmFiles
from ..statedir.store import atomic_write

QEMU = "qemu-system-x86_64"
QEMU_USER = "warmvm-qemu"  # made by hack/install-deps.sh
# spawn, setuid binaries, the scheduler and obsolete calls denied; elevating privileges cannot be denied
# as well in QEMU 7.2, since its filter is installed before -runas drops root (it would kill QEMU)
SANDBOX = "on,obsolete=deny,spawn=deny,resourcecontrol=deny"
CONSOLE_CAP = 4 << 20  # bytes of console log kept; a guest must not fill the state's file system
CONSOLE_KEEP = 1 << 20  # what is left of it once it passes the cap
KVM_GET_API_VERSION, KVM_CREATE_VM = 0xAE00, 0xAE01


@dataclass(frozen=True)
class Machine:
    """Everything one QEMU invocation needs."""

    name: str
    kernel: Path
    initrd: Path | None
    rootfs: Path
    disk: Path
    disk_format: str  # raw | qcow2, as recorded when the disk was made
    backing: Path | None  # a qcow2 disk's seed, named here: never read from the disk's own header
    tap: str | int  # the TAP's name, or an open TAP file descriptor handed to QEMU (a template's)
    mac: str
    address: IPv4Interface | None  # the guest's address with its prefix length (None: a template)
    gateway: str | None
    vcpus: int
    memory: int
    accel: str  # kvm | tcg
    host_key: Path | None = None  # the VM's own SSH host key (dropbear's format), handed over through fw_cfg
    tsc_khz: int | None = None  # the host's TSC rate, which a TCG guest needs told (see host_tsc_khz)
    user: str | None = QEMU_USER  # the unprivileged user QEMU drops to once its files are open
    # The snapshot layout (a template, and every copy restored from it): no identity on the kernel
    # command line, which is part of the saved state, but one fixed-size fw_cfg entry, which is not
    identity: Path | None = None
    incoming: bool = False  # waits for a saved state (QMP migrate-incoming) instead of booting


def mac_for(name: str) -> str:
    """A stable, locally administered MAC derived from the VM's name."""
    digest = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def qemu_argv(m: Machine, files: VmFiles) -> list[str]:
    """Every option value that comes from a path or a name is escaped (a comma starts a new option in
    QEMU's parser), disks are -blockdev nodes in JSON with their recorded format, so that QEMU never
    guesses one from content a guest wrote, and a qcow2 disk's backing file is the one named here."""
    cpu = ["-accel", "kvm", "-cpu", "host"] if m.accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    netdev = f"fd={m.tap}" if isinstance(m.tap, int) else f"ifname={escape(m.tap)},script=no,downscript=no"
    if m.identity is not None:
        fw_cfg = ["-fw_cfg", f"name={IDENTITY_ENTRY},file={escape(m.identity)}"]
    else:
        fw_cfg = ["-fw_cfg", f"name=opt/warmvm/hostkey,file={escape(m.host_key)}"] if m.host_key else []
    argv = [QEMU, "-name", f"warmvm-{m.name}", "-M", "microvm,rtc=on", *cpu,
            "-m", str(m.memory >> 20), "-smp", str(m.vcpus), "-nodefaults", "-no-user-config",
            "-display", "none",
            "-chardev", f"file,id=console,path={escape(files.console)},append=on", "-serial", "chardev:console",
            "-qmp", f"unix:{escape(files.qmp)},server=on,wait=off",
            "-kernel", str(m.kernel), *(["-initrd", str(m.initrd)] if m.initrd else []), "-append", kernel_cmdline(m),
            *_blockdev("root", m.rootfs, "raw", read_only=True),
            "-device", "virtio-blk-device,drive=root,serial=warmvm-root",
            *_work_disk(m),
            "-device", "virtio-blk-device,drive=work,serial=warmvm-work",
            "-netdev", f"tap,id=n0,{netdev}",
            "-device", f"virtio-net-device,netdev=n0,mac={m.mac}",
            *fw_cfg,
            "-pidfile", str(files.pidfile), "-sandbox", SANDBOX]
    return argv + (["-runas", m.user] if m.user else []) + (["-incoming", "defer"] if m.incoming else [])


def kernel_cmdline(m: Machine) -> str:
    # cryptomgr.notests: the kernel's crypto self-tests cost 0.5 s of a TCG boot and test nothing of ours
    # warmvm.debug=1: the guest marks its boot stages on the console (a few lines; the boot timeline)
    if m.identity is not None:
        append = "console=ttyS0 quiet cryptomgr.notests warmvm.template=1 warmvm.debug=1"
    else:
        append = (f"console=ttyS0 quiet cryptomgr.notests warmvm.ip={m.address} warmvm.gw={m.gateway} "
                  f"warmvm.hostname={m.name} warmvm.debug=1")
    if m.accel == "tcg" and m.tsc_khz:
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


def start(m: Machine, files: VmFiles) -> int:
    """Spawns QEMU detached (own session, output to qemu.log) and returns its pid at once. A TAP
    given as a descriptor is QEMU's fd 3."""
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in (files.pidfile, files.qmp):
        stale.unlink(missing_ok=True)
    for made in (files.console, files.log):  # fresh files of ours: a link planted there is removed, not followed
        made.unlink(missing_ok=True)
        os.close(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    argv = qemu_argv(m, files)
    binary = shutil.which(argv[0])
    if binary is None:
        raise PermanentError(f"{argv[0]} is not installed (make setup installs it)")
    if m.user is not None:
        try:
            pwd.getpwnam(m.user)
        except KeyError:
            raise PermanentError(f"user {m.user!r} does not exist: QEMU would run as root (make setup adds it)") \
                from None
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, str(files.log), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW, 0o600),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    if isinstance(m.tap, int):
        actions.append((os.POSIX_SPAWN_DUP2, m.tap, 3))
        argv = qemu_argv(replace(m, tap=3), files)
    old = os.umask(0o077)  # the QMP socket and logs: owner only
    try:
        pid = os.posix_spawn(binary, argv, os.environ, setsid=True, file_actions=actions)
    finally:
        os.umask(old)
    return pid


def cap_console(files: VmFiles) -> bool:
    """Keeps a console log under CONSOLE_CAP: past it, only its last CONSOLE_KEEP bytes stay (QEMU
    appends, so it goes on writing at the new end). True if it was cut."""
    try:
        fd = os.open(files.console, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size <= CONSOLE_CAP:
            return False
        tail = os.pread(fd, CONSOLE_KEEP, size - CONSOLE_KEEP)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"[warmvm: console log cut at %d bytes]\n" % size + tail, 0)
        return True
    finally:
        os.close(fd)


def running_pid(files: VmFiles, hint: int | None = None) -> int | None:
    """The pid of this VM's QEMU if one is alive: found through the pid file QEMU itself writes (so
    that a QEMU whose spawn was never recorded is found too), else the recorded `hint`. A pid alone is
    no proof (pids are reused): the process must be a QEMU whose own -pidfile argument is this very
    file, however either path is spelt."""
    for pid in (_pid_in(files.pidfile), hint):
        if pid is not None and _is_ours(pid, files.pidfile):
            return pid
    return None


def find_untracked(files: VmFiles) -> int | None:
    """A QEMU of this VM that no pid file names (its pid file removed): a scan of every process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_ours(int(entry.name), files.pidfile):
            return int(entry.name)
    return None


def _pid_in(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _is_ours(pid: int, pidfile: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, IndexError):
        return False
    if state == "Z":
        exited(pid)  # a QEMU this process spawned that died is its zombie until reaped
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system") or b"-pidfile" not in argv[:-1]:
        return False
    named = os.fsdecode(argv[argv.index(b"-pidfile") + 1])
    return os.path.realpath(os.path.join(cwd, named)) == os.path.realpath(pidfile)


def failure_reason(files: VmFiles) -> str:
    """Why QEMU exited: the last line it printed."""
    try:
        lines = [line for line in files.log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def stop(files: VmFiles, pid: int | None, timeout: float) -> str:
    """Stops the VM: ACPI power-down over QMP, SIGKILL after `timeout`. Returns how it ended."""
    pid = running_pid(files, pid)
    if pid is None:
        return "not running"
    how = "powerdown"
    try:
        qmp(files.qmp, "system_powerdown")
    except OSError:
        how = "killed"
    if not _wait_gone(files, pid, timeout if how == "powerdown" else 0):
        how = "killed"
        kill(files, pid)
    files.pidfile.unlink(missing_ok=True)
    files.qmp.unlink(missing_ok=True)
    return how


def kill(files: VmFiles, pid: int | None) -> None:
    """SIGKILL to this VM's QEMU (its pid file's, else `pid`, if either is one), and waits for it to go."""
    found = running_pid(files, pid)
    if found is not None:
        os.kill(found, signal.SIGKILL)
        _wait_gone(files, found, 5.0)


def _wait_gone(files: VmFiles, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running_pid(files, pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class Qmp:
    """A QMP session: greeting and capabilities negotiation once, then commands, each with its reply
    (events in between are skipped). A descriptor goes along with a command as SCM_RIGHTS."""

    def __init__(self, path: Path, timeout: float = 2.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
            self.stream = self.sock.makefile("rb")
            json.loads(self.stream.readline())  # greeting
            self.run("qmp_capabilities")
        except (OSError, ValueError) as e:
            self.sock.close()
            raise OSError(f"QMP {path}: {e}") from None

    def run(self, command: str, fd: int | None = None, **arguments: object) -> Any:
        message = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})}).encode() + b"\n"
        if fd is None:
            self.sock.sendall(message)
        else:
            socket.send_fds(self.sock, [message], [fd])
        while True:
            line = self.stream.readline()
            if not line:
                raise OSError(f"QMP {command}: QEMU closed the connection")
            reply = json.loads(line)
            if "event" not in reply:
                break
        if "error" in reply:
            raise OSError(f"QMP {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qmp(path: Path, command: str, timeout: float = 2.0) -> Any:
    """One QMP command in a session of its own."""
    with Qmp(path, timeout) as session:
        return session.run(command)


def exited(pid: int) -> bool:
    """Whether a QEMU this process spawned has exited (it is reaped then); True as well for a pid
    that is no child of this process. Right after the spawn its command line may not be QEMU's
    yet, so `running_pid` cannot tell."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def kill_spawned(pid: int) -> None:
    """Kills a QEMU this process spawned and has not reaped (until it is reaped, its pid cannot be
    another process's), and reaps it. Right after the spawn, its command line may still be ours."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # reaped already
    if done == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def connect(files: VmFiles, pid: int, timeout: float) -> Qmp:
    """A session with a QEMU this process just spawned, once its QMP socket listens (QEMU dying
    first: OSError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Qmp(files.qmp, timeout)
        except OSError:
            if exited(pid) or time.monotonic() > deadline:
                raise OSError(f"QEMU exited: {failure_reason(files) or 'no message'}") from None
            time.sleep(0.005)


def save_state(session: Qmp, out: int, timeout: float) -> None:
    """The guest paused and its whole state written to the open file `out` (QMP migrate to an fd:
    QEMU's sandbox forbids spawning the `exec:` helper)."""
    session.run("stop")
    session.run("migrate-set-parameters", **{"max-bandwidth": 1 << 40})  # a file, not a network link
    session.run("getfd", fd=out, fdname="state")
    session.run("migrate", uri="fd:state")
    _await_migration(session, timeout, "saving")


def load_state(session: Qmp, source: int, timeout: float) -> None:
    """A QEMU started with `-incoming defer` loads a saved state from the open file `source`, then
    runs it (the template was saved paused, and QEMU restores it paused)."""
    session.run("getfd", fd=source, fdname="state")
    session.run("migrate-incoming", uri="fd:state")
    _await_migration(session, timeout, "loading")
    if session.run("query-status")["status"] != "running":
        session.run("cont")


def _await_migration(session: Qmp, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (info := session.run("query-migrate")).get("status") != "completed":
        if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
            raise OSError(f"{what} the state: {info.get('error-desc') or info.get('status') or 'timed out'}")
        time.sleep(0.005)


IDENTITY_ENTRY = "opt/warmvm/identity"
IDENTITY_SIZE = 4096  # fixed: the guest's fw_cfg driver caches each entry's size from the template
TEMPLATE_IDENTITY = b"warmvm-template\n".ljust(IDENTITY_SIZE, b"\0")


@dataclass(frozen=True)
class Identity:
    """What makes a restored copy this VM (hack/image/identity.c reads it)."""

    hostname: str
    address: IPv4Interface
    gateway: str
    mac: str
    host_key: bytes  # dropbear's format

    def entry(self) -> bytes:
        """The fw_cfg entry, made at each start: fresh entropy for the guest's RNG, the host's clock."""
        text = (f"warmvm-identity\nhostname={self.hostname}\nip={self.address}\ngw={self.gateway}\nmac={self.mac}\n"
                f"time={time.time_ns()}\nseed={os.urandom(64).hex()}\nhostkey={self.host_key.hex()}\n").encode()
        if len(text) > IDENTITY_SIZE:
            raise PermanentError(f"the identity of {self.hostname} does not fit in {IDENTITY_SIZE} bytes")
        return text.ljust(IDENTITY_SIZE, b"\0")


def console_end(files: VmFiles, size: int = 1 << 16) -> bytes:
    """The end of the console log, however large a guest made it."""
    try:
        with open(files.console, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read(size)
    except OSError:
        return b""


def console_tail(files: VmFiles, lines: int = 15) -> str:
    return "\n".join(console_end(files, 8192).decode(errors="replace").splitlines()[-lines:])


def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz. Under TCG the guest's TSC runs at it, and a guest left to
    calibrate against the emulated PIT hangs in most boots ("Unable to calibrate against PIT")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError, IndexError):
        pass
    return None


TUNSETIFF, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x400454CA, 0x0002, 0x1000, 0x4000


def transient_tap() -> int:
    """A new TAP that exists only as long as this descriptor (and QEMU's copy of it): the kernel names
    it (wvtpl0, wvtpl1, ...), so it is never one that exists already; it is attached to nothing and
    never up. A template's: its guest lets its NIC go before it is saved."""
    import fcntl
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"wvtpl%d", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError:
        os.close(fd)
        raise
    return fd


def resolve_accel(wanted: str, layout: Layout, write: bool = False) -> str:
    """kvm | tcg for a spec's auto | kvm | tcg, from whether KVM is usable on this host (probed once
    per host boot; the result cached in the state directory if `write`)."""
    usable = _kvm_usable_cached(layout, write)
    if wanted == "kvm" and not usable:
        raise PermanentError("accel: kvm was asked for, but KVM is not usable on this host")
    if wanted == "auto":
        return "kvm" if usable else "tcg"
    return wanted


def _kvm_usable_cached(layout: Layout, write: bool) -> bool:
    cache = layout.host_facts
    key = f"{platform.release()}|{_boot_id()}"
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return bool(data["kvm"])
    except (OSError, ValueError, KeyError):
        pass
    usable = kvm_usable()
    if write:
        atomic_write(cache, json.dumps({"key": key, "kvm": usable}).encode(), layout.tmp)
    return usable


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return str(os.getpid())


def kvm_usable() -> bool:
    """KVM that can run a stock guest kernel: /dev/kvm answering, and hardware virtualisation in the CPU.

    A /dev/kvm that exists is no proof: under PVM (a host that is itself a
    guest) it creates VMs, but Debian's kernel hangs in them, and the CPU
    shows no vmx/svm flag.
    """
    import fcntl
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != 12:
            return False
        os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
    except OSError:
        return False
    finally:
        os.close(fd)
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return " vmx" in flags or " svm" in flags

