"""The control channel's frames, as the guest's agent speaks them (hack/image/agent.c). Pure.

Both ways a frame is a type (1 byte), a payload length (4 bytes, big-endian, at most
MAX_PAYLOAD) and the payload. The host asks (HELLO, STATUS, EXEC), the guest answers (HELLO,
STATUS, OUT, EXIT). Everything the guest sends is hostile input: the parser refuses a type the
guest may not send as soon as its first byte is in, a length over the bound as soon as the header
is, before any payload is buffered, and each payload is read strictly for its type. The first
refusal is a ProtocolError, on which the channel is closed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

HELLO, STATUS, EXEC, OUT, EXIT = (ord(c) for c in "HSEOX")
FROM_GUEST = frozenset({HELLO, STATUS, OUT, EXIT})
HEADER = struct.Struct(">BI")
MAX_PAYLOAD = 64 * 1024
VERSION = 1
NONCE = 16
STDOUT, STDERR = 1, 2
# STATUS bits: sshd listens on port 22, the work disk is mounted on /root, init finished its boot
SSHD, DISK, BOOTED = 1, 2, 4


class ChannelError(Exception):
    """The channel failed: nothing listens, the guest did not answer in time, or broke the protocol."""


class ProtocolError(ChannelError):
    """The guest sent something the protocol does not allow."""


@dataclass(frozen=True)
class Frame:
    kind: int
    payload: bytes

    @property
    def size(self) -> int:
        return HEADER.size + len(self.payload)


@dataclass(frozen=True)
class Status:
    """What the guest says of its boot."""

    sshd: bool
    disk: bool
    booted: bool

    @property
    def ready(self) -> bool:
        return self.sshd and self.disk and self.booted


def encode(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a frame of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    return HEADER.pack(kind, len(payload)) + payload


def hello(nonce: bytes) -> bytes:
    """Opens a session: the guest's answer carries the nonce back, so that what a previous client
    left in the channel is told apart from the answers to this one."""
    assert len(nonce) == NONCE
    return encode(HELLO, bytes([VERSION]) + nonce)


def status_query() -> bytes:
    return encode(STATUS)


def exec_request(argv: Sequence[str]) -> bytes:
    """A command line: each argument NUL-terminated (bytes as the file system would spell them)."""
    if not argv or not argv[0]:
        raise ValueError("no command given")
    args = [os.fsencode(a) for a in argv]
    if any(b"\0" in a for a in args):
        raise ValueError("an argument holds a NUL byte")
    payload = b"".join(a + b"\0" for a in args)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"the command line takes {len(payload)} bytes (at most {MAX_PAYLOAD})")
    return encode(EXEC, payload)


class Parser:
    """Frames out of the byte stream the guest sends, refused at the first byte that breaks them."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames = []
        while self._buffer:
            if self._buffer[0] not in FROM_GUEST:
                raise ProtocolError(f"a frame of unknown type {self._buffer[0]:#04x}")
            if len(self._buffer) < HEADER.size:
                break
            kind, size = HEADER.unpack_from(self._buffer)
            if size > MAX_PAYLOAD:
                raise ProtocolError(f"a frame of {size} bytes (at most {MAX_PAYLOAD})")
            if len(self._buffer) < HEADER.size + size:
                break
            frames.append(Frame(kind, bytes(self._buffer[HEADER.size:HEADER.size + size])))
            del self._buffer[:HEADER.size + size]
        return frames


def hello_nonce(frame: Frame) -> bytes:
    """The nonce a HELLO answer carries (a session of this client's, or a stale one)."""
    p = frame.payload
    if frame.kind != HELLO or len(p) != 1 + NONCE:
        raise ProtocolError(f"a HELLO of {len(p)} bytes (expected {1 + NONCE})")
    if p[0] != VERSION:
        raise ProtocolError(f"the guest agent speaks version {p[0]} (this controller: {VERSION})")
    return p[1:]


def status(frame: Frame) -> Status:
    p = frame.payload
    if frame.kind != STATUS or len(p) != 1 or p[0] & ~(SSHD | DISK | BOOTED):
        raise ProtocolError(f"a STATUS of {len(p)} bytes or unknown bits ({p[:4].hex()})")
    return Status(bool(p[0] & SSHD), bool(p[0] & DISK), bool(p[0] & BOOTED))


def output(frame: Frame) -> tuple[int, bytes]:
    """(stream, data) of an OUT frame: 1 stdout, 2 stderr, some data."""
    p = frame.payload
    if frame.kind != OUT or len(p) < 2 or p[0] not in (STDOUT, STDERR):
        raise ProtocolError(f"an OUT frame of {len(p)} bytes for stream {p[:1].hex() or '-'}")
    return p[0], p[1:]


def exit_code(frame: Frame) -> int:
    """A command's exit code, as a shell gives it: its own (0-255), or 128 + the signal that killed it."""
    p = frame.payload
    if frame.kind != EXIT or len(p) != 2 or p[0] not in (0, 1) or (p[0] == 1 and not 1 <= p[1] <= 64):
        raise ProtocolError(f"an EXIT of {len(p)} bytes ({p[:4].hex()})")
    return p[1] if p[0] == 0 else 128 + p[1]
