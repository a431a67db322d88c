"""Nothing is retried in a tight loop: a guest that exits after it was ready backs off, exponentially
and recorded, and an action that failed for good waits its turn, across the daemon's wake-ups and its
restarts (issue 21, item 7)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.adapters.qemu import running_pid
from controller.base.actions import Action
from controller.engine.retries import FIRST_WAIT, Retries, wait_after
from controller.statedir.layout import VmFiles
from controller.vms.state import RESTART_CAP, restart_delay

from .support.cli import qemu_pid, records, vm_record, vm_spec, vms, warmvm, write
from .support.daemon import Daemon
from .support.waits import wait_for


def test_the_restart_delay_is_immediate_then_doubles_to_its_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0 and delays[1] > 0
    assert all(b == min(RESTART_CAP, 2 * a) for a, b in zip(delays[1:], delays[2:], strict=False))
    assert delays[-1] == RESTART_CAP


def test_a_failure_for_good_is_remembered_in_the_state_directory(tmp_path: Path) -> None:
    from controller.vms.actions import VmForget
    path, tmp = tmp_path / "retries.json", tmp_path / "tmp"
    action: Action = VmForget("vm-a")
    retries = Retries(path, tmp)
    retries.record(action, "it cannot", now=1000.0)
    retries.save()
    again = Retries(path, tmp)  # a new process
    waiting = again.waiting(action, now=1000.0 + FIRST_WAIT - 1)
    assert waiting is not None and waiting.failures == 1 and waiting.error == "it cannot"
    assert again.waiting(action, now=1000.0 + FIRST_WAIT) is None
    again.record(action, "it still cannot", now=2000.0)
    assert again.failed[next(iter(again.failed))].retry_at == 2000.0 + wait_after(2) == 2000.0 + 2 * FIRST_WAIT
    assert again.waiting(VmForget("vm-b"), now=2000.0) is None, "another action is another entry"
    again.keep(())
    again.save()
    assert json.loads(path.read_text()) == {}, "what is no longer planned is forgotten"


@pytest.fixture
def daemons(netns: str) -> Iterator[Callable[[Path, Path], Daemon]]:
    started: list[Daemon] = []

    def start(specs: Path, state: Path) -> Daemon:
        started.append(Daemon(specs, state))
        return started[-1]
    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def _events(d: Daemon, kind: str, outcome: str | None = None) -> list[dict[str, object]]:
    return [r for r in records(d.log()) if r.get("stage") == kind and (outcome is None or r.get("outcome") == outcome)]


def test_a_start_that_failed_for_good_is_not_tried_at_every_wake_up(
        demo_host: tuple[Path, Path], daemons: Callable[[Path, Path], Daemon], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real failure for good: QEMU is not on the daemon's PATH, so its start is refused. Old code
    tried it again at every wake-up."""
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi", running="false"))
    assert warmvm(specs, state, "reconcile").returncode == 0
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi"))
    monkeypatch.setenv("PATH", str(_path_without_qemu(tmp_path / "bin")))
    d = daemons(specs, state)
    wait_for(lambda: _events(d, "vm_start", "failed"), 30, what="the start fails")
    for _ in range(3):
        before = d.finished()
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda b=before: d.finished() > b, 30, what="a pass after SIGHUP")  # type: ignore[misc]
    assert len(_events(d, "vm_start")) == 1, "tried once, not at every wake-up"
    assert _events(d, "vm_await") == [], "nothing waits for a start that failed"
    assert "waiting: vm_start vm/vm-a: failed 1 times in a row" in d.log()
    assert d.stop() == 0
    d = daemons(specs, state)  # a new daemon remembers
    wait_for(lambda: "summary" in d.log(), 30, what="the new daemon's first pass")
    assert _events(d, "vm_start") == [], "a daemon restart does not try it again before its time"
    saved = json.loads((state / "retries.json").read_text())
    assert [v["failures"] for v in saved.values()] == [1]
    assert d.stop() == 0
    operator = warmvm(specs, state, "reconcile")  # an operator asking now: tried at once, and counted
    assert operator.returncode != 0 and "vm_await" not in operator.stderr, "nothing waits for a failed start"
    assert [v["failures"] for v in json.loads((state / "retries.json").read_text()).values()] == [2]


def _path_without_qemu(bin_dir: Path) -> Path:
    bin_dir.mkdir()
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for tool in Path(directory).iterdir():
            if not tool.name.startswith("qemu-system") and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    return bin_dir


def _kill_when_ready(specs: Path, state: Path) -> float:
    wait_for(lambda: vms(specs, state)["vm-a"]["phase"] == "Running", 120, what="vm-a Running")
    pid = running_pid(VmFiles(state / "vms" / "vm-a"), qemu_pid(state, "vm-a"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return time.time()


@pytest.mark.e2e
def test_a_guest_that_keeps_exiting_backs_off_and_the_back_off_outlives_the_daemon(
        demo_host: tuple[Path, Path], daemons: Callable[[Path, Path], Daemon]) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi"))
    d = daemons(specs, state)
    _kill_when_ready(specs, state)
    wait_for(lambda: vm_record(state, "vm-a").get("exits") == 1, 30, what="the first exit counted")
    assert (vm_record(state, "vm-a")["retry_at"] or 0) <= time.time(), "the first restart is immediate"
    _kill_when_ready(specs, state)
    wait_for(lambda: vm_record(state, "vm-a").get("exits") == 2, 30, what="the second exit counted")
    second = vm_record(state, "vm-a")
    assert second["retry_at"] - time.time() > 0.5, "the second restart waits"
    row = vms(specs, state)["vm-a"]
    assert row["phase"] == "CrashLoop" and row["exits"] == 2 and row["nextStart"].startswith("in ")
    assert d.stop() == 0  # during the back-off: a new daemon must wait it out too
    d = daemons(specs, state)
    wait_for(lambda: vm_record(state, "vm-a").get("pid") is not None, 60, what="started again")
    started = vm_record(state, "vm-a")["started"]
    assert started >= second["retry_at"], "not started before its back-off was over"
    wait_for(lambda: vms(specs, state)["vm-a"]["phase"] == "Running", 120, what="Running again")
    assert vms(specs, state)["vm-a"]["restarts"] == 2
