"""QMP, spoken directly: a JSON line protocol of a few messages here, rather than through the
asyncio qemu.qmp package, which would be the only asyncio in the controller."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


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
