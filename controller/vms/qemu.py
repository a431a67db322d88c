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
import pwd
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

from ..core.errors import PermanentError
from ..statedir.layout import VmFiles

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
    tap: str
    mac: str
    address: IPv4Interface  # the guest's address with its prefix length
    gateway: str
    vcpus: int
    memory: int
    accel: str  # kvm | tcg
    host_key: Path | None = None  # the VM's own SSH host key (dropbear's format), handed over through fw_cfg
    tsc_khz: int | None = None  # the host's TSC rate, which a TCG guest needs told (see host_tsc_khz)
    user: str | None = QEMU_USER  # the unprivileged user QEMU drops to once its files are open


def mac_for(name: str) -> str:
    """A stable, locally administered MAC derived from the VM's name."""
    digest = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def qemu_argv(m: Machine, files: VmFiles) -> list[str]:
    """Every option value that comes from a path or a name is escaped (a comma starts a new option in
    QEMU's parser), disks are -blockdev nodes in JSON with their recorded format, so that QEMU never
    guesses one from content a guest wrote, and a qcow2 disk's backing file is the one named here."""
    cpu = ["-accel", "kvm", "-cpu", "host"] if m.accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    # cryptomgr.notests: the kernel's crypto self-tests cost 0.5 s of a TCG boot and test nothing of ours
    # warmvm.debug=1: the guest marks its boot stages on the console (a few lines; the boot timeline)
    append = (f"console=ttyS0 quiet cryptomgr.notests warmvm.ip={m.address} warmvm.gw={m.gateway} "
              f"warmvm.hostname={m.name} warmvm.debug=1")
    if m.accel == "tcg" and m.tsc_khz:
        append += f" tsc_early_khz={m.tsc_khz}"
    argv = [QEMU, "-name", f"warmvm-{m.name}", "-M", "microvm,rtc=on", *cpu,
            "-m", str(m.memory >> 20), "-smp", str(m.vcpus), "-nodefaults", "-no-user-config",
            "-display", "none",
            "-chardev", f"file,id=console,path={escape(files.console)},append=on", "-serial", "chardev:console",
            "-qmp", f"unix:{escape(files.qmp)},server=on,wait=off",
            "-kernel", str(m.kernel), *(["-initrd", str(m.initrd)] if m.initrd else []), "-append", append,
            *_blockdev("root", m.rootfs, "raw", read_only=True),
            "-device", "virtio-blk-device,drive=root,serial=warmvm-root",
            *_work_disk(m),
            "-device", "virtio-blk-device,drive=work,serial=warmvm-work",
            "-netdev", f"tap,id=n0,ifname={escape(m.tap)},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=n0,mac={m.mac}",
            *(["-fw_cfg", f"name=opt/warmvm/hostkey,file={escape(m.host_key)}"] if m.host_key else []),
            "-pidfile", str(files.pidfile), "-sandbox", SANDBOX]
    return argv + (["-runas", m.user] if m.user else [])


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
    """Spawns QEMU detached (own session, output to qemu.log) and returns its pid at once."""
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
    old = os.umask(0o077)  # the QMP socket and logs: owner only
    try:
        pid = os.posix_spawn(binary, argv, os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(files.log), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2)])
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
        _reap(pid)
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system") or b"-pidfile" not in argv[:-1]:
        return False
    named = os.fsdecode(argv[argv.index(b"-pidfile") + 1])
    return os.path.realpath(os.path.join(cwd, named)) == os.path.realpath(pidfile)


def _reap(pid: int) -> None:
    """A QEMU we spawned in this process and that died is our zombie until reaped."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


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
    if running_pid(files, pid) is not None:
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        _wait_gone(files, pid, 5.0)


def _wait_gone(files: VmFiles, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running_pid(files, pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def qmp(path: Path, command: str, timeout: float = 2.0) -> dict:  # type: ignore[type-arg]
    """One QMP command: greeting, capabilities negotiation, the command, its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        json.loads(stream.readline())  # greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline())
                if "event" not in reply:
                    break
            if "error" in reply:
                raise OSError(f"QMP {execute}: {reply['error'].get('desc')}")
        return reply  # type: ignore[no-any-return]


def console_tail(files: VmFiles, lines: int = 15) -> str:
    try:
        data = files.console.read_bytes()[-8192:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


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

