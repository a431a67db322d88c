"""The metrics endpoint holds under a flood: no thread per connection, a deadline for each request
head, a bound on the connections it holds, a scrape answered within 1 s throughout; a bind error is
one line, and an address beyond loopback is said to be open.

The real daemon (`warmvm watch --metrics-addr`) runs as a child in the test's namespace (its specs
are empty: it makes no device); the flood comes from this process's sockets on that namespace's
loopback. The numbers are the README's promise (controller/daemon/endpoint.py holds them).
"""

from __future__ import annotations

import os
import resource
import select
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.cli import REPO, command
from .support.daemon import Daemon
from .support.waits import wait_for

FLOOD = 800
BOUND = 64  # connections held at once
HEAD_DEADLINE = 3.0  # seconds for a whole request head
PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # the blank line that ends a head never comes


@pytest.fixture
def fds() -> Iterator[None]:
    """Room for the flood's sockets in this process (and in the daemon, which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def daemon(fds: None, netns: str, workdir: tuple[Path, Path]) -> Iterator[Daemon]:
    d = Daemon(*workdir)
    try:
        wait_for(lambda: d.passes() >= 1)  # up, its endpoint answering
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def half_sent(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        s.sendall(PARTIAL)
    except OSError:  # closed already to make room for a newer one: what the bound is for
        pass
    return s


def scrape(port: int) -> float:
    """Seconds from connecting to the whole page (the connection closed after it)."""
    started = time.monotonic()
    page = b""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        while chunk := s.recv(65536):
            page += chunk
            assert time.monotonic() - started < 1, "no whole page within 1 s"
    assert page.startswith(b"HTTP/1.") and b" 200 OK" in page.split(b"\r\n")[0], page[:200]
    assert b"\nwarmvm_reconcile_passes_total " in page
    return time.monotonic() - started


def scrape_or_never(port: int) -> float:
    try:
        return scrape(port)
    except OSError:  # refused, or no answer within its 1 s timeout
        return float("inf")


def closed(socks: dict[int, socket.socket], wait: float) -> set[int]:
    """The keys of the sockets the server has closed (EOF or reset), polling up to `wait` seconds."""
    poller = select.poll()
    by_fd = {s.fileno(): i for i, s in socks.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    gone = set()
    for fd, _ in poller.poll(wait * 1000):
        s = socks[by_fd[fd]]
        try:
            s.setblocking(False)
            if s.recv(4096) == b"":
                gone.add(by_fd[fd])
        except ConnectionResetError:
            gone.add(by_fd[fd])
        except BlockingIOError:
            pass
    return gone


def stats(values: list[float]) -> str:
    return f"min {min(values) * 1000:.1f} / median {statistics.median(values) * 1000:.1f} / " \
           f"max {max(values) * 1000:.1f} ms over {len(values)}"


def test_a_flood_of_half_sent_requests_costs_no_thread_and_a_scrape_still_answers_within_1s(daemon: Daemon) -> None:
    pid, port = daemon.proc.pid, daemon.port
    before = threads(pid)
    flood: list[socket.socket] = []
    during = []
    try:
        for i in range(FLOOD):
            flood.append(half_sent(port))
            if i % 40 == 39:  # throughout the flood, not only after it
                during.append(scrape_or_never(port))
        during += [scrape_or_never(port) for _ in range(20)]
        held = threads(pid)
    finally:
        for s in flood:
            s.close()
    assert held <= before + 1, f"{held - before} more threads in the daemon after {FLOOD} half-sent requests"
    assert max(during) < 1.0, stats(during)


def test_a_request_head_that_trickles_is_cut_at_its_deadline(daemon: Daemon) -> None:
    head = PARTIAL + b"X-Slow: " + b"a" * 200
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=2)
    started = time.monotonic()
    cut = None
    try:
        for byte in head:  # a byte every 0.2 s: every byte arrives well within any per-read timeout
            if time.monotonic() - started > HEAD_DEADLINE + 3:
                break
            try:
                s.send(bytes([byte]))
            except OSError:
                cut = time.monotonic()
                break
            if closed({0: s}, 0.2):
                cut = time.monotonic()
                break
    finally:
        s.close()
    assert cut is not None, f"a trickling head still held after {time.monotonic() - started:.1f} s"
    assert HEAD_DEADLINE - 0.5 <= cut - started <= HEAD_DEADLINE + 1.0, f"cut after {cut - started:.2f} s"


def test_connections_beyond_the_bound_close_the_oldest_waiting_at_once(daemon: Daemon) -> None:
    excess = 36
    socks = dict(enumerate(half_sent(daemon.port) for _ in range(BOUND + excess)))
    opened = time.monotonic()
    try:
        gone: set[int] = set()
        while len(gone) < excess and time.monotonic() - opened < 1.0:
            gone |= closed({i: s for i, s in socks.items() if i not in gone}, 0.1)
        assert gone == set(range(excess)), f"closed within 1 s of the last: {sorted(gone)}"
        assert not closed({i: s for i, s in socks.items() if i >= excess}, 0), "the newest are held"
    finally:
        for s in socks.values():
            s.close()


def test_a_port_taken_or_an_address_not_host_port_is_one_line(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for addr, why in ((f"127.0.0.1:{port}", "Address already in use"), ("127.0.0.1:http", "not HOST:PORT"),
                          ("no-such-host.invalid:9464", "")):
            done = subprocess.run(command(specs, state, "watch", "--metrics-addr", addr), cwd=REPO, timeout=60,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
            assert done.returncode == 1, done.stderr
            assert len(done.stderr.splitlines()) == 1, done.stderr
            assert done.stderr.startswith(f"warmvm: --metrics-addr {addr}: {why}"), done.stderr


def test_metrics_beyond_loopback_are_said_to_be_open_and_loopback_is_not(daemon: Daemon, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "wide").mkdir()
    wide = Daemon(tmp_path / "wide", tmp_path / "wide-state", "--metrics-addr", f"0.0.0.0:{port}")
    try:
        wait_for(lambda: "answer anyone" in wide.log(), timeout=30)
        line = next(line for line in wide.log().splitlines() if "answer anyone" in line)
        assert line == (f"warmvm: metrics on 0.0.0.0:{port} answer anyone who can reach this host (any address) "
                        f"on port {port}, and the guests of a network whose hostPorts opens it; "
                        "127.0.0.1 keeps them to this host")
    finally:
        wide.proc.kill()
        wide.proc.wait()
    assert "answer anyone" not in daemon.log()


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /metrics HTTP/1.1\r\nHost: x", b"HTTP/1.1 200 OK"),
    (b"GET /?x=1 HTTP/1.0", b"HTTP/1.1 200 OK"),
    (b"HEAD /metrics HTTP/1.1", b"HTTP/1.1 200 OK"),
    (b"POST /metrics HTTP/1.1", b"HTTP/1.1 405 Method Not Allowed"),
    (b"GET /etc/passwd HTTP/1.1", b"HTTP/1.1 404 Not Found"),
    (b"GET /metrics", b"HTTP/1.1 400 Bad Request"),
    (b"\x00\xff garbage", b"HTTP/1.1 400 Bad Request"),
])
def test_only_get_and_head_of_the_metrics_are_answered(head: bytes, status: bytes) -> None:
    from controller.daemon.endpoint import answer
    from controller.daemon.metrics import Metrics
    response = answer(head, Metrics().page)
    top, _, body = response.partition(b"\r\n\r\n")
    assert top.split(b"\r\n")[0] == status
    assert (b"warmvm_reconcile_passes_total" in body) == (status.endswith(b"200 OK") and head.startswith(b"GET"))
    length = int(next(line for line in top.split(b"\r\n") if line.startswith(b"Content-Length: ")).split()[1])
    assert length == len(body) or head.startswith(b"HEAD")


def test_a_scraper_that_asks_for_openmetrics_gets_it_and_a_malformed_accept_the_text_format() -> None:
    from controller.daemon.metrics import Metrics
    body, kind = Metrics().page("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.4")
    assert kind.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    body, kind = Metrics().page("application/openmetrics-text;version=x.y")
    assert kind.startswith("text/plain") and b"warmvm_spec_errors" in body


@pytest.mark.parametrize(("address", "said"), [
    (("127.0.0.1", 9464), None),
    (("127.3.4.5", 9464), None),
    (("::1", 9464, 0, 0), None),
    (("::ffff:127.0.0.1", 9464, 0, 0), None),
    (("0.0.0.0", 9464), "metrics on 0.0.0.0:9464 answer anyone who can reach this host (any address) on port 9464"),
    (("::", 9464, 0, 0), "metrics on [::]:9464 answer anyone who can reach this host (any address) on port 9464, and the guests"),
    (("10.0.0.5", 80), "metrics on 10.0.0.5:80 answer anyone who can reach 10.0.0.5 on port 80, and the guests"),
    (("fe80::1%eth0", 80, 0, 2), "metrics on [fe80::1]:80 answer anyone who can reach fe80::1 on port 80; 127.0.0.1"),
])
def test_an_address_beyond_loopback_is_said_to_be_open(address: tuple[str, int], said: str | None) -> None:
    from controller.daemon.endpoint import exposure
    note = exposure(address)
    assert note == said if said is None else note is not None and note.startswith(said)


def test_an_ipv6_loopback_address_is_served(netns: str) -> None:
    from controller.daemon.metrics import Metrics
    server = Metrics().serve("[::1]:0")
    try:
        with socket.create_connection(("::1", server.address[1]), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            page = b""
            while chunk := s.recv(65536):
                page += chunk
        assert page.startswith(b"HTTP/1.1 200 OK") and b"warmvm_spec_errors" in page
    finally:
        server.close()
    assert "warmvm-metrics" not in [t.name for t in threading.enumerate()]


def test_both_units_bound_their_tasks_with_room_for_the_vms() -> None:
    for unit in ("warmvm-watch.service", "warmvm-agent.service"):
        text = (REPO / "hack" / unit).read_text()
        limits = [line.partition("=")[2] for line in text.splitlines() if line.startswith("TasksMax=")]
        assert len(limits) == 1 and limits[0].isdigit(), f"{unit}: TasksMax {limits}"
        assert int(limits[0]) >= 200 * (2 + 8 + 64), f"{unit}: no room for 200 busy 8-vCPU QEMUs"
