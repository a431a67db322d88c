"""What wakes the daemon. Events only wake it: every pass observes the world afresh and plans from
scratch, so a missed or doubled event costs at most a pass. Events that arrive during a pass
coalesce into one follow-up pass.

Sources: spec files (watchfiles, debounced so an editor's write-and-rename is one wake-up), netlink
link events for our devices and for devices appearing under a pool prefix or a bridge name, QEMU
exits (a pidfd per running VM), and the caller's periodic resync.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ..adapters.netlink.messages import Link, parse_link_events
from ..adapters.netlink.rtnl import get_link, link_events
from ..network.marks import parse_mark

Seen = tuple[str | None, int | None, bool]  # an own device as the last pass left it: mark, master, up


class Wakeups:
    """Reasons to run a pass, collected from every source until the loop takes them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.reasons: set[str] = set()

    def post(self, reason: str) -> None:
        with self.cond:
            self.reasons.add(reason)
            self.cond.notify()

    def wait(self, timeout: float | None) -> set[str]:
        with self.cond:
            if not self.reasons:
                self.cond.wait(timeout)
            taken, self.reasons = self.reasons, set()
            return taken


def watch_specs(root: Path, wake: Wakeups, stop: threading.Event) -> None:
    """Spec file changes; `step` is how long a burst of changes may pause and still be one."""
    from watchfiles import watch  # imported here: only the daemon needs it
    for _ in watch(root, stop_event=stop, debounce=500, step=30, rust_timeout=1000, yield_on_timeout=False):
        wake.post("spec")


class LinkWatcher:
    """RTNLGRP_LINK events for devices this instance cares about: its own (by mark), and any device
    whose name falls under a pool prefix or is a bridge of the specs (a foreign one appearing there
    changes what the pool may use). The changes a pass makes to its own devices wake nothing: while
    it runs (`busy`) it observes its own work, and a later event about a device that is now as the
    last pass left it (`known`) is only its echo."""

    def __init__(self, wake: Wakeups, instance: Callable[[], str | None]) -> None:
        self.wake = wake
        self.instance = instance
        self.prefixes: tuple[str, ...] = ()
        self.bridges: frozenset[str] = frozenset()
        self.known: dict[str, Seen] = {}
        self.busy = threading.Event()
        self.pending: set[str] = set()  # devices that had events during a pass
        self.lock = threading.Lock()

    def track(self, prefixes: Iterable[str], bridges: Iterable[str], known: dict[str, Seen]) -> None:
        self.prefixes, self.bridges, self.known = tuple(prefixes), frozenset(bridges), known

    def run(self, stop: threading.Event) -> None:
        with link_events() as sock:
            sock.settimeout(1.0)
            while not stop.is_set():
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError:  # ENOBUFS: events were lost; a pass observes everything anyway
                    self.wake.post("netlink")
                    continue
                if any(self._relevant(deleted, link) for deleted, link in parse_link_events(data)):
                    self.wake.post("netlink")

    def _relevant(self, deleted: bool, link: Link) -> bool:
        mark = parse_mark(link.alias)
        ours = mark is not None and (mark.instance == self.instance() or mark.instance is None)
        if not (ours or self._watched(link.name)):
            return False
        if self.busy.is_set() and not deleted:
            with self.lock:
                self.pending.add(link.name)  # judged once the pass is over, against what it left
            return False
        return self._changed(link.name)

    def _watched(self, name: str) -> bool:
        return name in self.known or name in self.bridges or any(map(name.startswith, self.prefixes))

    def _changed(self, name: str) -> bool:
        """Events tell history; what counts is the device as it is now against what the last pass left:
        one of ours gone or changed, or a device that is new under a watched name."""
        now = get_link(name)
        if now is None:
            return name in self.known  # one of ours is gone; a device that came and went is nothing
        return self.known.get(now.name) != (now.alias, now.master, now.up)

    def settle(self) -> None:
        """A pass is over: the events that came during it are judged now; any real change wakes."""
        with self.lock:
            names, self.pending = self.pending, set()
        if any(self._changed(name) for name in names):
            self.wake.post("netlink")


class ExitWatcher:
    """A pidfd per running QEMU: its exit wakes the daemon at once (a dead VM is started again)."""

    def __init__(self, wake: Wakeups) -> None:
        self.wake = wake
        self.fds: dict[int, int] = {}  # pid -> pidfd
        self.lock = threading.Lock()
        self.poke_r, self.poke_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def track(self, pids: Iterable[int]) -> None:
        wanted = set(pids)
        with self.lock:
            for pid in set(self.fds) - wanted:
                os.close(self.fds.pop(pid))
            for pid in wanted - set(self.fds):
                try:
                    self.fds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    self.wake.post("qemu-exit")  # gone between the observation and now
        os.write(self.poke_w, b"x")

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            poller = select.poll()
            poller.register(self.poke_r, select.POLLIN)
            with self.lock:
                by_fd = {fd: pid for pid, fd in self.fds.items()}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(1000):
                if fd == self.poke_r:
                    while _drain(self.poke_r):
                        pass
                    continue
                with self.lock:
                    pid = by_fd[fd]
                    if self.fds.get(pid) == fd:
                        os.close(self.fds.pop(pid))
                self.wake.post("qemu-exit")


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


def start(target: Callable[[threading.Event], None], stop: threading.Event, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
    thread.start()
    return thread

