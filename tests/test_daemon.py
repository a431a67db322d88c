"""`warmvm watch`: woken by events, never blocked by one slow VM, with metrics and a service unit.

The daemon runs as a real process in the test's namespace; what woke each pass and how many passes
ran are read from its own metrics endpoint (served on the namespace's loopback).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.adapters.netlink.rtnl import dump_links
from controller.daemon.wake import Wakeups
from controller.network.marks import parse_mark

from .conftest import REPO, network_spec, qemu_pids_under, vm_spec, write
from .test_vms_e2e import image_spec


class Daemon:
    def __init__(self, specs: Path, state: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--specs", str(specs), "--state", str(state), "--log-format", "json",
             "watch", "--metrics-addr", f"127.0.0.1:{self.port}", *extra],
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

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=120)
        self.reader.join(timeout=5)
        return code


@pytest.fixture
def daemon(netns: str, workdir: tuple[Path, Path]) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*extra: str) -> Daemon:
        d = Daemon(*workdir, *extra)
        started.append(d)
        return d
    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def pool(state: Path) -> list[str]:
    instance = (state / "instance").read_text().strip() if (state / "instance").exists() else "-"
    return [l.name for l in dump_links() if (m := parse_mark(l.alias)) and m.instance == instance and m.role == "pool"]


def test_a_spec_edit_wakes_a_pass_and_the_metrics_show_it(daemon: Callable[..., Daemon],
                                                          workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    d = daemon()
    wait_for(lambda: d.passes() >= 1)  # the pass every start makes
    write(specs / "net.yaml", network_spec(size=2))
    wait_for(lambda: len(pool(state)) == 2)
    wait_for(lambda: d.metric("warmvm_pool_idle_taps", network="default") == 2)
    assert d.metric("warmvm_wakeups_total", source="spec") >= 1
    assert d.metric("warmvm_actions_total", kind="pool_grow", outcome="ok") == 1
    assert d.metric("warmvm_pool_size", network="default") == 2
    assert d.metric("warmvm_spec_errors") == 0
    assert d.metric("warmvm_reconcile_duration_seconds_count") == d.passes() >= 1
    assert d.stop() == 0


def test_a_deleted_tap_and_a_foreign_device_under_the_prefix_wake_it(daemon: Callable[..., Daemon],
                                                                      workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2))
    d = daemon("--interval", "3600")
    wait_for(lambda: len(pool(state)) == 2 and d.passes() >= 1)
    time.sleep(0.5)  # the first pass is over: what follows can only be woken by the kernel's events
    victim = sorted(pool(state))[0]
    subprocess.run(["ip", "link", "del", victim], check=True)
    wait_for(lambda: len(pool(state)) == 2 and victim not in pool(state), timeout=10)
    assert d.metric("warmvm_wakeups_total", source="netlink") >= 1
    before = d.metric("warmvm_wakeups_total", source="netlink")
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", "tap-pool-900"], check=True)
    wait_for(lambda: d.metric("warmvm_wakeups_total", source="netlink") > before, timeout=10)
    assert "tap-pool-900" not in pool(state)
    assert d.stop() == 0


def test_a_burst_of_edits_is_coalesced_into_few_passes(daemon: Callable[..., Daemon],
                                                        workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    d = daemon("--interval", "3600")
    wait_for(lambda: len(pool(state)) == 1)
    wait_for(lambda: d.passes() >= 1)
    time.sleep(1.0)
    before = d.passes()
    for size in range(2, 22):  # twenty writes in a burst
        write(specs / "net.yaml", network_spec(size=size))
        time.sleep(0.005)
    wait_for(lambda: len(pool(state)) == 21)
    time.sleep(1.0)
    assert d.passes() - before <= 5, "events arriving during a pass make one follow-up pass, not one each"
    assert d.stop() == 0


def test_wakeups_coalesce_into_one_set_of_reasons() -> None:
    wake = Wakeups()
    for reason in ("spec", "spec", "netlink", "spec"):
        wake.post(reason)
    assert wake.wait(0) == {"spec", "netlink"}
    assert wake.wait(0.01) == set()


def test_sigterm_during_a_pass_finishes_the_pass_and_exits_0(daemon: Callable[..., Daemon],
                                                             workdir: tuple[Path, Path], tmp_path: Path) -> None:
    specs, state = workdir
    d = daemon("--interval", "3600")
    write(specs / "net.yaml", network_spec(size=300))  # a pass long enough to be interrupted
    wait_for(lambda: any('"pool_grow"' in line or "bridge_ensure" in line for line in d.lines), timeout=30)
    assert d.stop(signal.SIGTERM) == 0
    assert any('"summary": "reconcile: converged' in line for line in d.lines), "the pass under way finished"
    assert len(pool(state)) == 300


def test_sighup_reads_the_specs_now_and_a_broken_spec_leaves_it_running(daemon: Callable[..., Daemon],
                                                                         workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    d = daemon("--interval", "3600")
    wait_for(lambda: len(pool(state)) == 1)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.metric("warmvm_wakeups_total", source="sighup") == 1)
    write(specs / "bad.yaml", "kind: [\n")
    wait_for(lambda: d.metric("warmvm_spec_errors") == 1)
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    write(specs / "bomb.yaml", "\n".join(levels) + "\n")  # a billion laughs
    wait_for(lambda: d.metric("warmvm_spec_errors") == 2)
    assert d.proc.poll() is None, "a bad spec never stops the daemon"
    rows = subprocess.run([sys.executable, "-m", "controller", "--state", str(state), "get", "daemon", "-o", "json"],
                          capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert '"running": true' in rows and f'"pid": {d.proc.pid}' in rows
    assert d.stop() == 0
    assert not any("Traceback" in line for line in d.lines)


def test_the_service_unit_is_accepted_by_systemd(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = (REPO / "hack" / "warmvm-watch.service").read_text()
    local = unit.replace("/opt/warmvm/.venv/bin/warmvm", str(REPO / ".venv" / "bin" / "warmvm"))
    (tmp_path / "warmvm-watch.service").write_text(local)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "warmvm-watch.service")],
                            capture_output=True, text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr
    assert "Restart=on-failure" in unit and "KillMode=process" in unit


@pytest.mark.e2e
def test_a_killed_qemu_is_replaced_at_once_and_a_boot_never_holds_the_pool(
        daemon: Callable[..., Daemon], workdir: tuple[Path, Path], demo_image: Path) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    write(specs / "image.yaml", image_spec(demo_image))
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi"))
    d = daemon("--interval", "3600")
    try:
        wait_for(lambda: _ready(state, "vm-a"), timeout=120)
        (old,) = qemu_pids_under(state)
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: [p for p in qemu_pids_under(state) if p != old] != [], timeout=10)
        assert time.monotonic() - killed < 5, "a dead QEMU is started again at once, not at the next resync"
        try:
            wait_for(lambda: d.metric("warmvm_wakeups_total", source="qemu-exit") >= 1, timeout=5)
        except AssertionError:
            print("".join(d.lines)[-6000:])
            raise
        # vm-a boots again (seconds under TCG); a pool refill meanwhile must not wait for it
        write(specs / "net.yaml", network_spec(size=30))
        wait_for(lambda: len(pool(state)) == 30, timeout=10)
        assert not _ready(state, "vm-a"), "the pool was refilled while the VM was still booting"
        wait_for(lambda: _ready(state, "vm-a"), timeout=120)
        wait_for(lambda: d.metric("warmvm_vms", phase="Running") == 1, timeout=5)  # set by the pass it wakes
        assert d.metric("warmvm_vm_create_to_ready_seconds_count") >= 1
    finally:
        for spec in specs.glob("*.yaml"):
            spec.unlink()
        write(specs / "net.yaml", network_spec(size=0))
        subprocess.run([sys.executable, "-m", "controller", "--specs", str(specs), "--state", str(state),
                        "--lock-timeout", "60", "reconcile"], cwd=REPO, capture_output=True, check=False)
        assert d.stop() == 0


def _ready(state: Path, vm: str) -> bool:
    try:
        return json.loads((state / "vms" / vm / "vm.json").read_text()).get("ready") is not None
    except (OSError, ValueError):
        return False


def test_the_daemon_makes_a_snapshot_once_its_vms_run_and_restores_the_next_vm(
        daemon: Callable[..., Daemon], workdir: tuple[Path, Path], demo_image: Path) -> None:
    """Boot waits run beside the passes: a restored VM's state is loaded in its wait, which no later
    pass's wait for the same VM disturbs."""
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2))
    write(specs / "image.yaml", image_spec(demo_image))
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", boot="restore"))
    d = daemon("--interval", "3600")
    try:
        wait_for(lambda: _ready(state, "vm-a"), timeout=120)
        wait_for(lambda: list((state / "snapshots").glob("*/*.bin")) != [], timeout=120)
        write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", boot="restore") + "---\n"
              + vm_spec("vm-b", diskSize="64Mi", boot="restore"))
        wait_for(lambda: _ready(state, "vm-b"), timeout=120)
        record = json.loads((state / "vms" / "vm-b" / "vm.json").read_text())
        assert record["boot"] == "restore" and not record.get("restore_failed"), "".join(d.lines)[-4000:]
        assert len(qemu_pids_under(state / "vms" / "vm-b")) == 1
    finally:
        for spec in specs.glob("*.yaml"):
            spec.unlink()
        write(specs / "net.yaml", network_spec(size=0))
        subprocess.run([sys.executable, "-m", "controller", "--specs", str(specs), "--state", str(state),
                        "--lock-timeout", "60", "--confirm-removals", "reconcile"], cwd=REPO, capture_output=True,
                       check=False)
        assert d.stop() == 0
