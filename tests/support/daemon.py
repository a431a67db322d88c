"""`warmvm watch` as a real child process in the test's namespace, read while it runs: its JSON log
lines, its metrics endpoint (on the namespace's loopback) and its status file."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

from .cli import REPO, command


class Daemon:
    def __init__(self, specs: Path, state: Path, *extra: str) -> None:
        self.state = state
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            command(specs, state, "--log-format", "json", "watch", "--metrics-addr", f"127.0.0.1:{self.port}", *extra),
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def metric(self, name: str, **labels: str) -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return 0.0
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            m = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
            if m and (m.group(1) or "") == want:
                return float(m.group(2))
        return 0.0

    def passes(self) -> float:
        return self.metric("warmvm_reconcile_passes_total")

    def finished(self) -> int:
        """Passes over to their very end, from the status file the daemon writes last in a pass (after it
        has counted the pass in its metrics and noted the devices it left, so that their echoes wake nothing)."""
        try:
            return int(json.loads((self.state / "daemon.json").read_text())["passes"])
        except (OSError, ValueError, KeyError):
            return 0

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=120)
        self.reader.join(timeout=5)
        return code
