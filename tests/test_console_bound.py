"""A guest's console log stays under its cap at all times, whether a controller runs or not: QEMU
writes it into a FIFO that a drainer of its own keeps in a bounded log (issue 21, item 1)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.adapters.qemu import console
from controller.statedir.layout import VmFiles

from .support.cli import REPO, command, reconcile, ssh_command, vm_spec, write
from .support.waits import wait_for

LAST = b"the-last-line"


class Follower:
    """`warmvm logs -f VM`, its output read beside the test."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO)
        self.received = 0
        self.end = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 16):
            self.received += len(chunk)
            self.end = (self.end + chunk)[-4096:]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _watch_size(path: Path, until: threading.Event) -> list[int]:
    largest = [0]

    def sample() -> None:
        while not until.is_set():
            try:
                largest[0] = max(largest[0], path.stat().st_size)
            except OSError:
                pass
            time.sleep(0.005)
    threading.Thread(target=sample, daemon=True).start()
    return largest


def test_the_drainer_keeps_the_log_bounded_and_its_last_bytes(tmp_path: Path) -> None:
    """No QEMU needed for the drainer itself: this test writes the FIFO as QEMU does (holding it open
    for reading and writing), and a child `sleep` stands in for QEMU's pid (a test double for the
    process whose exit ends the drainer)."""
    files = VmFiles(tmp_path)
    console.make(files)
    writer = os.open(files.console_fifos[1], os.O_RDWR)
    stand_in = subprocess.Popen(["sleep", "60"])
    done = threading.Event()
    largest = _watch_size(files.console, done)
    follower = Follower([sys.executable, "-c", "import sys; from pathlib import Path; "
                         "from controller.adapters.qemu.console import follow\n"
                         "for chunk in follow(Path(sys.argv[1]), True):\n"
                         "    sys.stdout.buffer.write(chunk); sys.stdout.flush()", str(files.console)])
    try:
        console.start_drainer(files, stand_in.pid)
        wait_for(lambda: console.drained(files), 10, what="the drainer holds the log")
        block = b"x" * 65535 + b"\n"
        for _ in range(12 * 16):  # 12 MiB
            os.write(writer, block)
        os.write(writer, LAST + b"\n")
        wait_for(lambda: files.console.read_bytes().endswith(LAST + b"\n"), 30, what="the last line is in the log")
        wait_for(lambda: LAST in follower.end, 30, what="the follower saw the last line")
        done.set()
        assert largest[0] <= console.CONSOLE_CAP, f"the log reached {largest[0]} bytes"
        kept = files.console.read_bytes()
        assert kept.startswith(b"[warmvm: console log cut at") and len(kept) <= console.CONSOLE_KEEP + 64 << 10
        stand_in.kill()
        stand_in.wait()
        wait_for(lambda: not console.drained(files), 10, what="the drainer ends with its QEMU")
    finally:
        done.set()
        follower.stop()
        stand_in.kill()
        stand_in.wait()
        os.close(writer)


def test_a_dead_drainer_is_replaced_and_nothing_the_pipe_held_is_lost(tmp_path: Path) -> None:
    files = VmFiles(tmp_path)
    console.make(files)
    writer = os.open(files.console_fifos[1], os.O_RDWR)
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        console.keep_bounded(files, stand_in.pid)  # what a pass does: no drainer yet, so one starts
        wait_for(lambda: console.drained(files), 10, what="a drainer holds the log")
        os.write(writer, b"before\n")
        wait_for(lambda: files.console.read_bytes() == b"before\n", 10, what="drained")
        drainer = _drainer_of(files)
        os.kill(drainer, 9)
        wait_for(lambda: not console.drained(files), 10, what="the drainer is gone")
        os.write(writer, b"meanwhile\n")  # waits in the pipe
        console.keep_bounded(files, stand_in.pid)
        wait_for(lambda: files.console.read_bytes() == b"before\nmeanwhile\n", 10, what="drained again")
    finally:
        stand_in.kill()
        stand_in.wait()
        os.close(writer)


def _drainer_of(files: VmFiles) -> int:
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"drain.py") for a in argv) and str(files.console).encode() in argv:
            return int(proc.name)
    raise AssertionError("no drainer runs")


@pytest.mark.e2e
def test_a_guest_flooding_its_console_never_passes_the_cap_with_no_daemon(demo_host: tuple[Path, Path]) -> None:
    """A one-shot reconcile, then the guest writes 12 MiB to its serial console: the log never
    passes the cap, keeps the guest's last line, and `logs -f` follows it throughout."""
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi"))
    reconcile(specs, state)  # it returns: no warmvm process runs while the guest floods
    log = state / "vms" / "vm-a" / "console.log"
    done = threading.Event()
    largest = _watch_size(log, done)
    follower = Follower(command(specs, state, "logs", "-f", "vm-a"))
    try:
        begun = time.monotonic()
        flood = subprocess.run([*ssh_command(state, "vm-a"),
                                "head -c 12582912 /dev/zero | tr '\\0' x > /dev/ttyS0; echo; echo the-last-line"
                                " > /dev/ttyS0"], capture_output=True, text=True, timeout=180, cwd=REPO,
                               stdin=subprocess.DEVNULL)
        assert flood.returncode == 0, flood.stderr
        wait_for(lambda: LAST in log.read_bytes()[-4096:], 30, what="the last line is in the log")
        wait_for(lambda: LAST in follower.end, 30, what="logs -f saw the last line")
        done.set()
        print(f"flood of 12 MiB: {time.monotonic() - begun:.1f} s; largest log seen {largest[0]} bytes; "
              f"logs -f received {follower.received} bytes")
        assert largest[0] <= console.CONSOLE_CAP, f"the console log reached {largest[0]} bytes"
        assert follower.received > console.CONSOLE_CAP, "logs -f followed the log through its cuts"
    finally:
        done.set()
        follower.stop()
