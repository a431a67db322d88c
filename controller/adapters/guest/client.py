"""The host's end of a VM's control channel: the UNIX socket QEMU serves (state/vms/VM/ctl.sock, one
client at a time) and the guest's warmvm-agent answers. A session, the guest's status, a command.

Every call is bounded by a deadline, on a non-blocking socket: a guest that answers nothing, too
much or garbage costs the caller at most its deadline, and garbage ends the channel at once
(ProtocolError, frames.py). What a previous client left in the channel (the answers it never
read) is skipped, at most STALE_LIMIT bytes of it, until the answer to this client's HELLO.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from .frames import (
    EXIT,
    HELLO,
    NONCE,
    OUT,
    STATUS,
    ChannelError,
    Frame,
    Parser,
    ProtocolError,
    Status,
    exec_request,
    exit_code,
    hello,
    hello_nonce,
    output,
    status,
    status_query,
)

RECV = 1 << 16
STALE_LIMIT = 1 << 20  # bytes of a previous session skipped before this one's HELLO is answered
OUTPUT_LIMIT = 16 << 20  # bytes a command may send (its frames' headers counted): past them it is killed


class NotListening(ChannelError):
    """No QEMU listens on the channel's socket (it does not run, or has no channel)."""


class ChannelTimeout(ChannelError):
    """The guest did not answer in time."""


class OutputLimit(ChannelError):
    """A command sent more than its bound."""


class Channel:
    """One connection: frames out, frames in, each within a deadline (None: no deadline)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()
        self.frames: deque[Frame] = deque()
        self.nonces: set[bytes] = set()  # HELLOs sent and not answered yet
        self.greeted = False  # one of them was: the session is this client's
        self.skipped = 0

    @classmethod
    def connect(cls, path: Path) -> Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise NotListening(f"nothing listens on {path}: {e.strerror}") from None
        except OSError as e:
            sock.close()
            why = "its listen queue is full" if isinstance(e, BlockingIOError) else e.strerror
            raise ChannelError(f"cannot connect to {path}: {why}") from None
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes, deadline: float | None) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                if not self._wait(select.POLLOUT, deadline):
                    raise ChannelTimeout("the guest takes no input") from None
            except OSError as e:
                raise ChannelError(f"the channel failed: {e.strerror}") from None

    def receive(self, deadline: float | None) -> Frame | None:
        """The next frame, or None if none came by the deadline (what has come is read even past it)."""
        while not self.frames:
            if not self._wait(select.POLLIN, deadline):
                return None
            try:
                data = self.sock.recv(RECV)
            except BlockingIOError:
                continue
            except OSError as e:
                raise ChannelError(f"the channel failed: {e.strerror}") from None
            if not data:
                raise ChannelError("the channel was closed (its QEMU exited?)")
            self.frames.extend(self.parser.feed(data))
        return self.frames.popleft()

    def say_hello(self, deadline: float | None) -> None:
        nonce = os.urandom(NONCE)
        self.nonces.add(nonce)
        self.send(hello(nonce), deadline)

    def next(self, deadline: float | None) -> Frame | None:
        """The next frame of this session: before its HELLO is answered, earlier sessions' frames are
        skipped (bounded), and after it, the answers to this client's repeated HELLOs."""
        while (frame := self.receive(deadline)) is not None:
            if frame.kind == HELLO and (nonce := hello_nonce(frame)) in self.nonces:
                self.nonces.discard(nonce)
                if not self.greeted:
                    self.greeted = True
                    return frame
                continue
            if self.greeted:
                return frame
            self.skipped += frame.size
            if self.skipped > STALE_LIMIT:
                raise ProtocolError(f"over {STALE_LIMIT >> 20} MiB before the answer to this session's HELLO")
        return None

    def _wait(self, event: int, deadline: float | None) -> bool:
        poller = select.poll()
        poller.register(self.sock, event)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
        return bool(poller.poll(timeout))


def open_session(path: Path, deadline: float) -> Channel:
    """A session with the guest's agent, once it answered this client's HELLO by the deadline."""
    channel = Channel.connect(path)
    try:
        channel.say_hello(deadline)
        while not channel.greeted:
            if channel.next(deadline) is None:
                raise ChannelTimeout("no answer from the guest's agent (an image without warmvm-agent, a guest "
                                     "still booting, or another client on its channel)")
    except BaseException:
        channel.close()
        raise
    return channel


def run(channel: Channel, argv: Sequence[str], deadline: float | None, write: Callable[[int, bytes], None],
        limit: int = OUTPUT_LIMIT) -> int:
    """Runs argv in the guest; its output goes to write(stream, data) as it comes; its exit code
    (128 + N if signal N killed it). ChannelTimeout at the deadline, OutputLimit past `limit`
    bytes: the caller closes the channel, and the guest kills the command."""
    channel.send(exec_request(argv), deadline)
    received = 0
    while True:
        frame = channel.next(deadline)
        if frame is None:
            raise ChannelTimeout("the command did not finish in time")
        if frame.kind == EXIT:
            return exit_code(frame)
        if frame.kind != OUT:
            raise ProtocolError(f"a frame of type {chr(frame.kind)!r} during a command")
        received += frame.size
        if received > limit:
            raise OutputLimit(f"its output passed {limit >> 20} MiB")
        write(*output(frame))


class StatusWatch:
    """A booting guest asked, step by step, whether it is up: each step takes its budget, no more,
    so that the caller watches the console and the QEMU beside it. Connects (and sends HELLO again,
    in case the agent restarted) until the agent answers; then asks every ASK_EVERY. Any frame it did
    not ask for, or any garbage, ends the watch (`error`)."""

    HELLO_EVERY = 1.0
    ASK_EVERY = 0.025

    def __init__(self, path: Path) -> None:
        self.path = path
        self.channel: Channel | None = None
        self.error: str | None = None
        self.last: Status | None = None  # the last answer that was not ready
        self.answered = False  # an agent answered this watch's HELLO
        self._hello_at = self._asked_at = -1e9
        self._asked = False

    def step(self, budget: float) -> Status | None:
        """The guest's status, once it says it is ready; None until then (and after an error)."""
        end = time.monotonic() + budget
        try:
            answer = self._step(end)
        except ChannelError as e:
            self.error = str(e)
            self.close()
            answer = None
        if answer is None:
            time.sleep(max(0.0, end - time.monotonic()))
        return answer

    def _step(self, end: float) -> Status | None:
        if self.error is not None:
            return None
        if self.channel is None:
            try:
                self.channel = Channel.connect(self.path)
            except ChannelError:
                return None  # QEMU does not listen yet (or at all: a QEMU of an older warmvm)
        channel = self.channel
        now = time.monotonic()
        if not channel.greeted and now - self._hello_at >= self.HELLO_EVERY:
            channel.say_hello(end)
            self._hello_at = now
        while True:
            if channel.greeted and not self._asked and time.monotonic() - self._asked_at >= self.ASK_EVERY:
                channel.send(status_query(), end)
                self._asked, self._asked_at = True, time.monotonic()
            frame = channel.next(end)
            if frame is None:
                return None
            if frame.kind == HELLO:
                self.answered = True
                continue  # this session's answer: ask now
            if frame.kind != STATUS or not self._asked:
                raise ProtocolError(f"a frame of type {chr(frame.kind)!r} it was not asked for")
            self._asked = False
            answer = status(frame)
            if answer.ready:
                return answer
            self.last = answer

    def close(self) -> None:
        """Frees the channel (QEMU serves one client at a time)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
