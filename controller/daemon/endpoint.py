"""The metrics endpoint (--metrics-addr): one thread, every connection bounded in time, size and number.

prometheus_client's own server spends a thread per connection and never times one out: 800
half-sent requests held 800 of the daemon's threads for good, up to the unit's task limit, where
it could no longer start a QEMU. Here one thread multiplexes every connection (selectors), so a
connection costs an fd and a few KiB, never a thread:
- a request head must arrive whole within HEAD_SECONDS (a total: trickling a byte a second does not
  extend it) and within HEAD_BYTES; the answer must be taken within SEND_SECONDS;
- at most MAX_CONNECTIONS are held. One more closes the oldest still waiting for its head: a flood
  of idle connections cannot shut a scrape out, which sends its head at once and is answered long
  before the flood's next MAX_CONNECTIONS connections reach it. If every one is being answered, the
  new one is closed at once.
GET or HEAD of /metrics (or /) is answered, then the connection closed (no keep-alive).
"""

from __future__ import annotations

import errno
import ipaddress
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..base.errors import WarmvmError

HEAD_SECONDS = 3.0
HEAD_BYTES = 8192
SEND_SECONDS = 10.0
MAX_CONNECTIONS = 64
# a full accept queue drops a scrape's SYN, which its client sends again only after 1 s: under a flood
# of connections a deep queue (the kernel's net.core.somaxconn at most) keeps it waiting ms instead
BACKLOG = socket.SOMAXCONN
ACCEPTS_PER_TURN = 16  # then read what arrived: a burst of connections does not evict a scrape unread
FULL_PAUSE = 0.5  # out of fds: stop accepting this long rather than spin on a listener that stays ready
END_OF_HEAD = re.compile(rb"\r?\n\r?\n")

Page = Callable[[str], tuple[bytes, str]]  # the request's Accept header -> (body, content type)


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None  # the answer, once the head is in (None: still reading it)


def listen(addr: str) -> socket.socket:
    """A listening socket on HOST:PORT ([::1]:PORT for IPv6, an empty HOST is 127.0.0.1), or one line."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise WarmvmError(f"--metrics-addr {addr}: not HOST:PORT")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host.strip("[]") or "127.0.0.1", int(port),
                                                          type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise WarmvmError(f"--metrics-addr {addr}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise WarmvmError(f"--metrics-addr {addr}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def exposure(address: tuple[str, int] | tuple[str, int, int, int]) -> str | None:
    """Who can read the metrics on a bound address that is not loopback (None: loopback, this host only)."""
    ip = ipaddress.ip_address(address[0].partition("%")[0])
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if ip.is_loopback or (mapped is not None and mapped.is_loopback):
        return None
    shown = f"[{ip}]:{address[1]}" if ip.version == 6 else f"{ip}:{address[1]}"
    where = "this host (any address)" if ip.is_unspecified else str(ip)
    # Linux answers for each of its addresses on every interface, but warmvm's input filter lets a
    # guest open only the ports its network lists in hostPorts, on its gateway (their IPv6 is dropped at
    # the bridge: README, "Security model: the network"); "::" takes IPv4 too
    guests = ", and the guests of a network whose hostPorts opens it" if ip.version == 4 or ip.is_unspecified else ""
    return f"metrics on {shown} answer anyone who can reach {where} on port {address[1]}{guests}; " \
           "127.0.0.1 keeps them to this host"


def answer(head: bytes, page: Page) -> bytes:
    """The whole response to one request head (pure but for `page`)."""
    lines = head.decode("latin-1").split("\n")
    request = lines[0].split()
    if len(request) != 3 or not request[2].startswith("HTTP/"):
        return _status("400 Bad Request")
    method, path = request[0], request[1].partition("?")[0]
    if method not in ("GET", "HEAD"):
        return _status("405 Method Not Allowed")
    if path not in ("/metrics", "/"):
        return _status("404 Not Found")
    accept = next((v for k, _, v in (line.partition(":") for line in lines[1:])
                   if k.strip().lower() == "accept"), "")
    body, content_type = page(accept.strip())
    return _head("200 OK", content_type, len(body)) + (body if method == "GET" else b"")


def _status(status: str) -> bytes:
    body = f"{status}\n".encode()
    return _head(status, "text/plain; charset=utf-8", len(body)) + body


def _head(status: str, content_type: str, length: int) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1")


class MetricsServer:
    """Serves `page` on a listening socket from one daemon thread, until close()."""

    def __init__(self, sock: socket.socket, page: Page) -> None:
        self.sock, self.page = sock, page
        self.address = sock.getsockname()
        self._conns: dict[socket.socket, _Conn] = {}  # in the order accepted: the oldest first
        self._selector = selectors.DefaultSelector()
        self._wake, self._waker = socket.socketpair()
        self._selector.register(sock, selectors.EVENT_READ)
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._paused_until: float | None = None
        self._thread = threading.Thread(target=self._run, name="warmvm-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._waker.send(b"\0")
        self._thread.join(timeout=5)
        self._waker.close()

    def _run(self) -> None:
        try:
            while True:
                deadlines = [c.deadline for c in self._conns.values()] + [self._paused_until or float("inf")]
                wait = min(deadlines) - time.monotonic()
                for key, _ in self._selector.select(None if wait == float("inf") else max(0.0, wait)):
                    if key.fileobj is self._wake:
                        return
                    if key.fileobj is self.sock:
                        self._accept()
                    elif key.data.sock.fileno() == -1:  # closed earlier in this turn (evicted)
                        continue
                    elif key.data.out is not None:
                        self._write(key.data)
                    else:
                        self._read(key.data)
                self._expire()
        finally:
            for conn in list(self._conns.values()):
                self._drop(conn)
            self._selector.close()
            self.sock.close()
            self._wake.close()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = self.sock.accept()
            except OSError as e:  # none waiting, or one aborted, or a network error it had: next time
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._selector.unregister(self.sock)  # out of fds: the listener stays ready, pause it
                    self._paused_until = time.monotonic() + FULL_PAUSE
                return
            if len(self._conns) >= MAX_CONNECTIONS and not self._evict():
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + HEAD_SECONDS)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._read(conn)  # a client's head often arrives with its connection

    def _evict(self) -> bool:
        """Close the oldest connection still waiting for its head; False if every one is being answered."""
        waiting = next((c for c in self._conns.values() if c.out is None), None)
        if waiting is not None:
            self._drop(waiting)
        return waiting is not None

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(HEAD_BYTES + 1 - len(conn.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.head += data
        end = END_OF_HEAD.search(conn.head)
        if end is not None:
            self._send(conn, self._respond(bytes(conn.head[:end.start()])))
        elif len(conn.head) > HEAD_BYTES:
            self._send(conn, _status("431 Request Header Fields Too Large"))

    def _respond(self, head: bytes) -> bytes:
        try:
            return answer(head, self.page)
        except Exception as e:  # a collector's bug must not end the endpoint: this one scrape fails
            print(f"warmvm: metrics: internal error: {type(e).__name__}: {e}", file=sys.stderr)
            return _status("500 Internal Server Error")

    def _send(self, conn: _Conn, data: bytes) -> None:
        conn.out, conn.deadline = memoryview(data), time.monotonic() + SEND_SECONDS
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            conn.out = conn.out[conn.sock.send(conn.out):]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            conn.out = conn.out[:0]
        if not conn.out:
            self._drop(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._drop(conn)
        if self._paused_until is not None and self._paused_until <= now:
            self._paused_until = None
            self._selector.register(self.sock, selectors.EVENT_READ)

    def _drop(self, conn: _Conn) -> None:
        del self._conns[conn.sock]
        self._selector.unregister(conn.sock)
        conn.sock.close()
