"""Events: the lifecycle log, one line per applied action, and the closing summary.

Human-readable by default, JSON lines with `--log-format json`. Written to
stderr so that `get -o json` and `plan` output on stdout stay parseable.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

Listener = Callable[[str, str, str, float, dict[str, Any]], None]  # stage, object, outcome, ms, details


class Lifecycle:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.listeners: list[Listener] = []  # e.g. the daemon's metrics

    def event(self, stage: str, subject: str, outcome: str, ms: float, **details: Any) -> None:
        for listener in self.listeners:
            listener(stage, subject, outcome, ms, details)
        if self.fmt == "json":
            record = {"time": time.time(), "stage": stage, "object": subject, "outcome": outcome,
                      "ms": round(ms, 1), **details}
            line = json.dumps(record, default=str)
        else:
            extra = " ".join(f"{k}={v}" for k, v in details.items() if v is not None)
            stamp = time.strftime("%H:%M:%S")
            line = f"{stamp} {stage:<14} {subject:<24} {outcome:<6} {ms:8.1f}ms {extra}".rstrip()
        print(line, file=self.stream, flush=True)

    def summary(self, text: str, **details: Any) -> None:
        if self.fmt == "json":
            print(json.dumps({"time": time.time(), "summary": text, **details}, default=str),
                  file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def progress(self, label: str) -> Iterator[None]:
        """A ticking elapsed-time line on a terminal while a long step runs."""
        done = threading.Event()
        start = time.monotonic()

        def tick() -> None:
            while not done.wait(0.5):
                print(f"\r  {label}: {time.monotonic() - start:.1f}s", end="", file=self.stream, flush=True)

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            print("\r\033[K", end="", file=self.stream, flush=True)
