"""What a real guest reaches of its host, and beyond it: the demo image booted under QEMU.

The test's namespace is the host. Besides the network's gateway (10.88.0.1)
it gets an address on an interface of the test's own (a bridge of its own,
10.99.0.1), and listeners, sockets of the test process, on both. From the
guest (`warmvm ssh`, busybox's nc and nslookup) each is tried with a short
timeout: only the ports the network opens on its gateway answer, and the
listener reads what arrived. That the guest can be asked at all is the
host's own SSH into it working (replies to the host's connections pass).

Egress: a second namespace stands for the outside world, behind a veth
pair, with a route back to the guests' subnet (so a guest's packets, were
they forwarded as they are, would be answered): a guest reaches it only
with `egress: nat`, and then as the host's address.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .support.cli import REPO, network_spec, reconcile, ssh_command, vm_spec, write

pytestmark = pytest.mark.e2e

GATEWAY, OTHER, OUTSIDE_HOST, OUTSIDE = "10.88.0.1", "10.99.0.1", "10.77.0.1", "10.77.0.2"
OPEN = "  hostPorts: [3128, 53/udp]\n"
WAIT = 60.0  # the longest any listener waits: every check ends long before


class Listener:
    """A socket of the host's that records who came and what they sent; a TCP one answers `welcome`."""

    def __init__(self, address: str, port: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> None:
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.arrived: list[tuple[str, bytes]] = []  # (peer address, what it sent)
        self.done = threading.Event()
        if kind == socket.SOCK_STREAM:
            self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, args=(kind,), daemon=True)
        self.thread.start()

    def _serve(self, kind: socket.SocketKind) -> None:
        deadline = time.monotonic() + WAIT
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                if kind == socket.SOCK_DGRAM:
                    data, peer = self.sock.recvfrom(4096)
                    self.arrived.append((peer[0], data))
                    continue
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(4096)
                    conn.sendall(b"welcome\n")
                except OSError:
                    data = b""
                self.arrived.append((peer[0], data))

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.sock.close()


@contextmanager
def listeners(*specs: tuple[str, int, socket.SocketKind]) -> Iterator[list[Listener]]:
    made: list[Listener] = []
    try:
        for address, port, kind in specs:
            made.append(Listener(address, port, kind))
        yield made
    finally:
        for listener in made:
            listener.close()


def in_guest(state: Path, vm: str, line: str) -> str:
    """`warmvm ssh VM -- LINE; echo exit=$?`: what it printed, then `exit=` and the status of LINE in the
    guest (so a check cannot pass because SSH failed)."""
    result = subprocess.run([*ssh_command(state, vm), f"{line}; echo exit=$?"], capture_output=True, text=True,
                            timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "exit=" in result.stdout, result
    return result.stdout


def tcp(address: str, port: int, text: str) -> str:
    """Connect from the guest, send `text`, print what comes back; `-w 2`: a dropped SYN gives up in 2 s."""
    return f"echo {text} | timeout 5 nc -w 2 {address} {port}"


def udp(address: str, port: int) -> str:
    """A DNS question from the guest (busybox nslookup; its server may name a port)."""
    return f"timeout 4 nslookup -type=a warmvm.test {address}:{port}"


def run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


def test_a_guest_reaches_only_the_ports_its_network_opens_on_its_gateway(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "net.yaml", network_spec(size=1) + OPEN)
    write(specs / "vm.yaml", vm_spec("vm-r", diskSize="64Mi"))
    run("ip", "link", "add", "wvt-other", "type", "bridge")  # no ports: an address of the host, no more
    run("ip", "addr", "add", f"{OTHER}/24", "dev", "wvt-other")
    run("ip", "link", "set", "wvt-other", "up")
    reconcile(specs, state)  # the host's SSH probe into the guest passed: replies to the host's connections pass
    stream, dgram = socket.SOCK_STREAM, socket.SOCK_DGRAM
    with listeners((OTHER, 3128, stream), (GATEWAY, 8080, stream), (GATEWAY, 3128, stream), (GATEWAY, 53, dgram),
                   (GATEWAY, 5353, dgram), ("0.0.0.0", 2222, stream)) as (other, closed, allowed, dns, udp_closed,
                                                                          wild):
        # a service bound only to another interface's address: Linux would deliver it the guest's packets
        assert "welcome" not in in_guest(state, "vm-r", tcp(OTHER, 3128, "to-other"))
        # a port of the gateway that the network does not open, and one on every address
        assert "welcome" not in in_guest(state, "vm-r", tcp(GATEWAY, 8080, "to-closed"))
        assert "welcome" not in in_guest(state, "vm-r", tcp(GATEWAY, 2222, "to-wildcard"))
        in_guest(state, "vm-r", udp(GATEWAY, 5353))
        assert "exit=0" not in in_guest(state, "vm-r", f"ping -c 1 -W 2 {GATEWAY}")  # ICMP too
        # the ports it opens: TCP 3128 (no protocol given) and UDP 53, on the gateway address
        answer = in_guest(state, "vm-r", tcp(GATEWAY, 3128, "to-allowed"))
        in_guest(state, "vm-r", udp(GATEWAY, 53))
        assert "welcome" in answer, answer
        assert [data for _, data in allowed.arrived] == [b"to-allowed\n"]
        assert dns.arrived and b"warmvm" in dns.arrived[0][1]
        assert other.arrived == closed.arrived == wild.arrived == udp_closed.arrived == []


@contextmanager
def outside_world() -> Iterator[str]:
    """A namespace beyond the host (10.77.0.2), behind a veth pair, routing the guests' subnet back to
    the host: what a guest's packets would meet out of another interface. Yields its name."""
    name = f"wvt-out-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", "wvt-o0", "type", "veth", "peer", "name", "wvt-o1", "netns", name)
        run("ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", "wvt-o0")
        run("ip", "link", "set", "wvt-o0", "up")
        for cmd in (["ip", "addr", "add", f"{OUTSIDE}/24", "dev", "wvt-o1"], ["ip", "link", "set", "wvt-o1", "up"],
                    ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "10.88.0.0/24", "via", OUTSIDE_HOST]):
            run("ip", "netns", "exec", name, *cmd)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


SERVE_ONCE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen(1); s.settimeout(float(sys.argv[2])); print("listening", flush=True)
try:
    c, peer = s.accept()
except TimeoutError:
    sys.exit(0)
c.settimeout(5); data = c.recv(4096); c.sendall(b"welcome\\n"); print(peer[0], data.decode().strip(), flush=True)
"""


def reach_outside(state: Path, outside: str) -> tuple[str, str]:
    """The guest connects to a listener of the outside world: (what the guest got, who the outside saw)."""
    server = subprocess.Popen(["ip", "netns", "exec", outside, sys.executable, "-c", SERVE_ONCE, OUTSIDE, "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        got = in_guest(state, "vm-r", tcp(OUTSIDE, 9000, "from-guest"))
        if "welcome" not in got:
            server.kill()  # it would wait out its timeout: whatever it accepted, it has printed
        seen, _ = server.communicate(timeout=15)
    finally:
        server.kill()
        server.wait()
    return got, seen.strip()


def test_a_guest_reaches_other_networks_only_with_egress_nat_and_as_the_host(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vm.yaml", vm_spec("vm-r", diskSize="64Mi"))
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    with outside_world() as outside:
        reconcile(specs, state)
        assert reach_outside(state, outside)[1] == ""  # egress: none, and forwarding off as it was
        write(specs / "net.yaml", network_spec(size=1) + "  egress: nat\n")
        out = reconcile(specs, state).stderr
        assert "forwarding_enable" in out and forwarding.read_text().strip() == "1"
        got, seen = reach_outside(state, outside)
        assert "welcome" in got and seen == f"{OUTSIDE_HOST} from-guest", (got, seen)  # masqueraded as the host
        # egress: none again: forwarding stays on (never turned off), and the guest is not forwarded
        write(specs / "net.yaml", network_spec(size=1))
        assert "forwarding_enable" not in reconcile(specs, state).stderr
        assert forwarding.read_text().strip() == "1"
        got, seen = reach_outside(state, outside)
        assert "welcome" not in got and seen == "", (got, seen)
