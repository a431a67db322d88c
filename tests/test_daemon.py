"""`warmvm watch`: woken by events, never blocked by one slow VM, with metrics and a service unit.

The daemon runs as a real process in the test's namespace; what woke each pass and how many passes
ran are read from its own metrics endpoint (served on the namespace's loopback).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.adapters.netlink.rtnl import dump_links
from controller.daemon.wake import Wakeups
from controller.network.marks import parse_mark

from .support.cli import REPO, instance, network_spec, vm_record, vm_spec, warmvm, write
from .support.daemon import Daemon
from .support.images import demo_image_spec
from .support.netns import qemu_pids_under
from .support.waits import wait_for


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


def pool(state: Path) -> list[str]:
    ours = instance(state) if (state / "instance").exists() else "-"
    return [l.name for l in dump_links() if (m := parse_mark(l.alias)) and m.instance == ours and m.role == "pool"]


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
    # the first pass is over, to its end: what follows can only be woken by the kernel's events
    wait_for(lambda: d.finished() >= 1)
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
    wait_for(lambda: d.finished() >= 1)  # the start's pass is over: every pass from here is the burst's
    before = d.passes()
    for size in range(2, 22):  # twenty writes in a burst
        write(specs / "net.yaml", network_spec(size=size))
        time.sleep(0.005)  # deliberate: the writes' spacing that makes them a burst, not a wait
    wait_for(lambda: len(pool(state)) == 21)
    time.sleep(1.0)  # deliberate: a window for the passes the burst may still cause, which are counted too
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
    write(specs / "image.yaml", demo_image_spec(demo_image))
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
            print(d.log()[-6000:])
            raise
        # vm-a boots again (seconds under TCG); a pool refill meanwhile must not wait for it
        write(specs / "net.yaml", network_spec(size=30))
        wait_for(lambda: len(pool(state)) == 30, timeout=10)
        assert not _ready(state, "vm-a"), "the pool was refilled while the VM was still booting"
        wait_for(lambda: _ready(state, "vm-a"), timeout=120)
        wait_for(lambda: d.metric("warmvm_vms", phase="Running") == 1, timeout=5)  # set by the pass it wakes
        assert d.metric("warmvm_vm_create_to_ready_seconds_count") >= 1
    finally:
        remove_everything(specs, state)
        assert d.stop() == 0


def remove_everything(specs: Path, state: Path, *options: str) -> None:
    """No spec but an empty pool, and one reconcile beside the daemon (it waits for the daemon's lock)."""
    for spec in specs.glob("*.yaml"):
        spec.unlink()
    write(specs / "net.yaml", network_spec(size=0))
    warmvm(specs, state, "--lock-timeout", "60", *options, "reconcile", timeout=300)


def _ready(state: Path, vm: str) -> bool:
    try:
        return vm_record(state, vm).get("ready") is not None
    except (OSError, ValueError):
        return False


@pytest.mark.e2e
def test_the_daemon_makes_a_snapshot_once_its_vms_run_and_restores_the_next_vm(
        daemon: Callable[..., Daemon], workdir: tuple[Path, Path], demo_image: Path) -> None:
    """Boot waits run beside the passes: a restored VM's state is loaded in its wait, which no later
    pass's wait for the same VM disturbs."""
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2))
    write(specs / "image.yaml", demo_image_spec(demo_image))
    write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", boot="restore"))
    d = daemon("--interval", "3600")
    try:
        wait_for(lambda: _ready(state, "vm-a"), timeout=120)
        wait_for(lambda: list((state / "snapshots").glob("*/*.bin")) != [], timeout=120)
        write(specs / "vm.yaml", vm_spec("vm-a", diskSize="64Mi", boot="restore") + "---\n"
              + vm_spec("vm-b", diskSize="64Mi", boot="restore"))
        wait_for(lambda: _ready(state, "vm-b"), timeout=120)
        record = vm_record(state, "vm-b")
        assert record["boot"] == "restore" and not record.get("restore_failed"), d.log()[-4000:]
        assert len(qemu_pids_under(state / "vms" / "vm-b")) == 1
    finally:
        remove_everything(specs, state, "--confirm-removals")
        assert d.stop() == 0
