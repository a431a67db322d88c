"""The control channel's host end against hostile guests: the frame parser on data (pure), and the
client on a real UNIX socket whose other end is a fake guest that answers, says nothing, floods, or
writes garbage. Each call returns or fails within its deadline, and garbage fails it at once."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.adapters import guest
from controller.adapters.guest import frames
from controller.adapters.guest.frames import EXIT, HELLO, OUT, STATUS, Frame, Parser, ProtocolError


def frame(kind: int | str, payload: bytes = b"") -> bytes:
    return struct.pack(">BI", ord(kind) if isinstance(kind, str) else kind, len(payload)) + payload


# --- the parser (pure) ---------------------------------------------------------------------------

def test_frames_fed_byte_by_byte_come_out_whole() -> None:
    stream = frame("O", b"\x01hello") + frame("X", b"\x00\x03") + frame("S", b"\x07")
    parser, got = Parser(), []
    for i in range(len(stream)):
        got += parser.feed(stream[i:i + 1])
    assert got == [Frame(OUT, b"\x01hello"), Frame(EXIT, b"\x00\x03"), Frame(STATUS, b"\x07")]


@pytest.mark.parametrize("data, why", [
    (b"\x00", "unknown type 0x00"),
    (b"E", "unknown type 0x45"),  # a host's frame type, never the guest's
    (frame("S", b"\x01") + b"Z", "unknown type 0x5a"),
    (b"O" + struct.pack(">I", frames.MAX_PAYLOAD + 1), "at most 65536"),
    (b"O\xff\xff\xff\xff", "at most 65536"),
])
def test_the_parser_refuses_a_bad_header_before_any_payload(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        Parser().feed(data)


def test_the_largest_frame_passes() -> None:
    payload = b"\x02" + os.urandom(frames.MAX_PAYLOAD - 1)
    assert Parser().feed(frame("O", payload)) == [Frame(OUT, payload)]


@pytest.mark.parametrize("decode, kind, payload", [
    (frames.status, "S", b""), (frames.status, "S", b"\x01\x01"), (frames.status, "S", b"\x08"),
    (frames.output, "O", b""), (frames.output, "O", b"\x01"), (frames.output, "O", b"\x03data"),
    (frames.exit_code, "X", b"\x00"), (frames.exit_code, "X", b"\x02\x00"), (frames.exit_code, "X", b"\x01\x00"),
    (frames.exit_code, "X", b"\x01\x41"), (frames.exit_code, "X", b"\x00\x00\x00"),
    (frames.hello_nonce, "H", b"\x01" + b"n" * 15), (frames.hello_nonce, "H", b"\x02" + b"n" * 16),
    (frames.output, "X", b"\x01data"),  # the right payload under another type
])
def test_payloads_are_read_strictly(decode: Callable[[Frame], object], kind: str, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(Frame(ord(kind), payload))


def test_payloads_read() -> None:
    assert frames.status(Frame(STATUS, b"\x07")).ready
    assert not frames.status(Frame(STATUS, b"\x03")).ready
    assert frames.output(Frame(OUT, b"\x02err")) == (2, b"err")
    assert frames.exit_code(Frame(EXIT, b"\x00\x03")) == 3
    assert frames.exit_code(Frame(EXIT, b"\x01\x09")) == 137
    assert frames.hello_nonce(Frame(HELLO, b"\x01" + b"n" * 16)) == b"n" * 16


@pytest.mark.parametrize("argv", [[], [""], ["a\0b"], ["x" * frames.MAX_PAYLOAD]])
def test_a_command_line_that_cannot_be_sent_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        frames.exec_request(argv)


def test_a_command_line_is_nul_terminated_arguments() -> None:
    assert frames.exec_request(["sh", "-c", ""]) == frame("E", b"sh\0-c\0\0")


# --- the client, against fake guests on a real socket ---------------------------------------------

Guest = Callable[[socket.socket], None]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Guest], Path]]:
    """fake(behaviour): a UNIX socket served, one client, by a thread that runs behaviour(connection)."""
    servers: list[tuple[socket.socket, threading.Thread]] = []

    def serve(behaviour: Guest) -> Path:
        path = tmp_path / f"ctl-{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)

        def run() -> None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    behaviour(conn)
                except OSError:
                    pass  # the client closed: what a hostile guest sees

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        servers.append((server, thread))
        return path
    yield serve
    for server, thread in servers:
        server.close()
        thread.join(timeout=5)


def read_frame(conn: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 5:
        head += conn.recv(5 - len(head)) or b"\0" * 5
    kind, size = struct.unpack(">BI", head)
    payload = b""
    while len(payload) < size:
        payload += conn.recv(size - len(payload))
    return kind, payload


def agent(conn: socket.socket) -> None:
    """A well-behaved guest: answers HELLO and STATUS (ready), runs every command as `echo hi; exit 3`."""
    while True:
        kind, payload = read_frame(conn)
        if kind == HELLO:
            conn.sendall(frame("H", payload))
        elif kind == STATUS:
            conn.sendall(frame("S", b"\x07"))
        else:
            conn.sendall(frame("O", b"\x01hi\n") + frame("X", b"\x00\x03"))


def silent(conn: socket.socket) -> None:
    while conn.recv(4096):
        pass


def garbage(conn: socket.socket) -> None:
    while True:
        conn.sendall(b"Z" + os.urandom(65535))


def flood_of_frames(conn: socket.socket) -> None:
    """Valid frames, endlessly, before any answer."""
    chunk = frame("O", b"\x01" + b"x" * 60000) * 16
    while True:
        conn.sendall(chunk)


def answers_then_floods(conn: socket.socket) -> None:
    kind, payload = read_frame(conn)
    conn.sendall(frame("H", payload))
    read_frame(conn)
    chunk = frame("O", b"\x01" + b"y" * 60000) * 16
    while True:
        conn.sendall(chunk)


def within(seconds: float, call: Callable[[], object]) -> object:
    start = time.monotonic()
    try:
        return call()
    finally:
        assert time.monotonic() - start < seconds


def test_a_session_runs_a_command(fake: Callable[[Guest], Path]) -> None:
    got: list[tuple[int, bytes]] = []
    with guest.open_session(fake(agent), time.monotonic() + 5) as channel:
        assert guest.run(channel, ["anything"], time.monotonic() + 5, lambda s, d: got.append((s, d))) == 3
    assert got == [(1, b"hi\n")]


def test_a_silent_guest_costs_its_deadline_and_no_more(fake: Callable[[Guest], Path]) -> None:
    with pytest.raises(guest.ChannelTimeout, match="no answer"):
        within(1.5, lambda: guest.open_session(fake(silent), time.monotonic() + 1))


def test_garbage_closes_the_session_at_once(fake: Callable[[Guest], Path]) -> None:
    with pytest.raises(ProtocolError, match="unknown type 0x5a"):
        within(1, lambda: guest.open_session(fake(garbage), time.monotonic() + 30))


def test_a_flood_before_the_answer_is_bounded(fake: Callable[[Guest], Path]) -> None:
    with pytest.raises(ProtocolError, match="over 1 MiB before the answer"):
        within(5, lambda: guest.open_session(fake(flood_of_frames), time.monotonic() + 30))


def test_a_command_that_floods_is_cut_at_its_bound(fake: Callable[[Guest], Path]) -> None:
    received = []
    with guest.open_session(fake(answers_then_floods), time.monotonic() + 5) as channel:
        with pytest.raises(guest.OutputLimit, match="passed 2 MiB"):
            within(5, lambda: guest.run(channel, ["yes"], None, lambda s, d: received.append(len(d)), limit=2 << 20))
    assert sum(received) <= 2 << 20


def test_a_command_past_its_deadline_times_out(fake: Callable[[Guest], Path]) -> None:
    def hangs(conn: socket.socket) -> None:
        kind, payload = read_frame(conn)
        conn.sendall(frame("H", payload))
        silent(conn)
    with guest.open_session(fake(hangs), time.monotonic() + 5) as channel:
        with pytest.raises(guest.ChannelTimeout):
            within(1.5, lambda: guest.run(channel, ["sleep"], time.monotonic() + 1, lambda s, d: None))


def test_the_answers_a_previous_client_left_are_skipped(fake: Callable[[Guest], Path]) -> None:
    def stale_first(conn: socket.socket) -> None:
        conn.sendall(frame("O", b"\x01old") + frame("X", b"\x00\x00") + frame("H", b"\x01" + b"s" * 16))
        agent(conn)
    got: list[bytes] = []
    with guest.open_session(fake(stale_first), time.monotonic() + 5) as channel:
        assert guest.run(channel, ["x"], time.monotonic() + 5, lambda s, d: got.append(d)) == 3
    assert got == [b"hi\n"]


def watch(path: Path, seconds: float) -> tuple[guest.StatusWatch, guest.Status | None]:
    w = guest.StatusWatch(path)
    end = time.monotonic() + seconds
    answer = None
    while answer is None and w.error is None and time.monotonic() < end:
        start = time.monotonic()
        answer = w.step(0.025)
        assert time.monotonic() - start < 0.2, "a step takes its budget, no more"
    w.close()
    return w, answer


def test_the_status_watch_says_ready_when_the_guest_does(fake: Callable[[Guest], Path]) -> None:
    w, answer = watch(fake(agent), 5)
    assert answer is not None and answer.ready and w.answered


@pytest.mark.parametrize("behaviour, why", [(garbage, "unknown type"), (flood_of_frames, "over 1 MiB")])
def test_the_status_watch_gives_up_on_a_hostile_guest(fake: Callable[[Guest], Path], behaviour: Guest,
                                                      why: str) -> None:
    w, answer = watch(fake(behaviour), 5)
    assert answer is None and w.error is not None and why in w.error


def test_the_status_watch_refuses_what_it_did_not_ask_for(fake: Callable[[Guest], Path]) -> None:
    def chatty(conn: socket.socket) -> None:
        kind, payload = read_frame(conn)
        conn.sendall(frame("H", payload) + frame("S", b"\x00") * 50)
        silent(conn)
    w, answer = watch(fake(chatty), 5)
    assert answer is None and w.error is not None and "was not asked for" in w.error


def test_the_status_watch_waits_for_a_socket_that_is_not_there_yet(tmp_path: Path) -> None:
    w, answer = watch(tmp_path / "nothing.sock", 0.3)
    assert answer is None and w.error is None and not w.answered
