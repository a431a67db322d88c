"""SSH to the guests: the readiness probe, `warmvm ssh`, and the keys (ssh-keygen).

A VM whose guest does not answer on its control channel (adapters/guest) is Running when an SSH
command succeeds. The probe must not feed on the guest it waits for (eight TCG guests on two
cores once drowned in restarted handshakes): it watches the console for the guest's own "warmvm:
ready" line and polls the TCP port (a SYN costs the guest nothing), and only then spends one
patient ssh login, not a storm of short ones.
"""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..base.errors import PermanentError

OPTIONS = ["-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           "-o", "BatchMode=yes"]
READY = b"warmvm: ready"
Pin = tuple[Path, str]  # a VM's known_hosts file and the alias its key is pinned under
PATIENT = 20  # seconds one readiness login may take on a loaded host
RETRY = 0.5  # between two logins that failed
PROBE_MARKED = 1.0  # seconds between port probes of a guest that marks its boot on the console


def ssh_argv(key: Path, ip: str, command: list[str], pin: Pin, connect_timeout: int = 5) -> list[str]:
    """ssh into a VM as root, accepting only the host key pinned for it (a guest that shows another
    key, another VM's for instance, is refused by ssh: "Host key verification failed")."""
    known_hosts, alias = pin
    return ["ssh", "-i", str(key), *OPTIONS, "-o", f"UserKnownHostsFile={known_hosts}", "-o", f"HostKeyAlias={alias}",
            "-o", f"ConnectTimeout={connect_timeout}", f"root@{ip}", *command]


def keygen(directory: Path, comment: str) -> Path:
    """A new ed25519 key pair in `directory` (key and key.pub, no passphrase): the private key's path."""
    made = directory / "key"
    done = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(made)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise PermanentError(f"ssh-keygen failed: {done.stderr.strip()}")
    return made


def host_alias(vm: str) -> str:
    return f"warmvm-{vm}"


def port_open(ip: str, port: int = 22, timeout: float = 0.05) -> bool:
    """A closed port answers at once; a guest not yet up answers nothing (no ARP reply), so the
    timeout bounds how late readiness is seen."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


# The boot's stages as the guest marks them on its console (warmvm.debug=1), seen by the host's clock:
# the guest's own uptime runs slow under TCG until its clocksource switches, so it is not used.
STAGES = (("kernel", b""), ("initramfs", b"initramfs start"), ("root_mounted", b"mounted"),
          ("init", b"init: start"), ("identity", b"init: identity taken"), ("network", b"init: network done"),
          ("sshd", READY))


class Timeline:
    """When each boot stage first showed on the console, in ms after `started` (wall clock)."""

    def __init__(self, console: Path, started: float) -> None:
        self.console, self.started = console, started
        self.seen: dict[str, float] = {}
        self.offset = 0
        self.text = b""

    def poll(self) -> bool:
        """Reads what the console gained; True once the guest said it is ready. A guest can lie here:
        it only decides when the login is tried, never that the VM is ready."""
        try:
            with open(self.console, "rb") as f:
                f.seek(self.offset)
                new = f.read(1 << 20)
        except OSError:
            return False
        if new:
            self.offset += len(new)
            self.text = (self.text + new)[-(1 << 16):]
            now = (time.time() - self.started) * 1000
            for stage, marker in STAGES:
                if stage not in self.seen and marker in self.text:
                    self.seen[stage] = round(now, 1)
        return "sshd" in self.seen

    def done(self, final: str = "ssh") -> dict[str, float]:
        """The stages seen, in boot order, and the end of the wait, named by how readiness was decided
        (`ssh`: a login's end; `channel`: the guest's agent said so). The console is read once more:
        the login may have been tried on the open port before the last lines were read (and the
        channel may answer before the ready line is read: it is then left out)."""
        ready_ms = round((time.time() - self.started) * 1000, 1)
        self.poll()
        return {stage: min(self.seen[stage], ready_ms) for stage, _ in STAGES if stage in self.seen} | {final: ready_ms}


class Hint:
    """Whether a booting guest looks ready for a login. A guest that marks its boot on the console is
    taken at its word on when to try: a connection to its port costs it a forked sshd, just when it
    is busiest, so its port is probed only now and then (in case its ready line was lost)."""

    def __init__(self, ip: str, timeline: Timeline) -> None:
        self.ip, self.timeline = ip, timeline
        self.probed = 0.0

    def __call__(self, probe: bool = True) -> bool:
        """The console's ready line, or (with `probe`) the port open."""
        ready = self.timeline.poll()
        if probe and not ready and time.monotonic() - self.probed >= (PROBE_MARKED if self.timeline.seen else 0.0):
            self.probed = time.monotonic()
            ready = port_open(self.ip)
        return ready


def wait_ready(key: Path, ip: str, deadline: float, timeline: Timeline, alive: Callable[[], bool], pin: Pin) -> bool:
    """Polls until `ssh true` succeeds (True), the deadline passes or the VM dies (False), trying a
    login when the guest looks ready (Hint)."""
    hint = Hint(ip, timeline)
    while time.monotonic() < deadline:
        if not alive():
            return False
        if hint():
            remaining = max(1, int(deadline - time.monotonic()))
            try:
                done = subprocess.run(ssh_argv(key, ip, ["true"], pin, min(PATIENT, remaining)), capture_output=True,
                                      stdin=subprocess.DEVNULL, timeout=PATIENT + 10, check=False)
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 0:
                return True
            time.sleep(RETRY)
            continue
        time.sleep(0.01)
    return False


def dropbear_key(openssh: str) -> bytes:
    """An unencrypted OpenSSH ed25519 private key (ssh-keygen's) in dropbear's own format, so that the
    guest uses it as it comes (converting it in the guest cost 0.23 s of every TCG boot). Dropbear's
    format: string "ssh-ed25519", string (32-byte seed + 32-byte public key)."""
    blob = base64.b64decode("".join(ln for ln in openssh.splitlines() if not ln.startswith("-----")))
    magic = b"openssh-key-v1\0"
    if not blob.startswith(magic):
        raise ValueError("not an OpenSSH private key")
    fields, off = [], len(magic)
    for _ in range(3):  # cipher, kdf, kdf options
        field, off = _string(blob, off)
        fields.append(field)
    if fields[0] != b"none":
        raise ValueError("an encrypted key")
    off += 4  # the number of keys: one
    _, off = _string(blob, off)  # the public key
    private, _ = _string(blob, off)
    kind, pos = _string(private, 8)  # after two check integers
    public, pos = _string(private, pos)
    secret, _ = _string(private, pos)
    if kind != b"ssh-ed25519" or len(public) != 32 or len(secret) != 64:
        raise ValueError("not an ed25519 key")
    return _pack(b"ssh-ed25519") + _pack(secret[:32] + public)


def _string(buf: bytes, off: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">I", buf, off)
    return buf[off + 4: off + 4 + size], off + 4 + size


def _pack(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data
