"""The CLI's contract: exit codes, the lock, and never deleting while a spec is broken."""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

from controller.adapters.netlink.rtnl import dump_links
from controller.network.marks import parse_mark
from controller.statedir.store import Store

from .support.cli import REPO, command, network_spec, vm_spec, warmvm, write
from .support.waits import wait_for


def our_links() -> dict[str, str]:
    """Marked devices, each with its mark shown without the instance (one instance per test)."""
    marks = {l.name: parse_mark(l.alias) for l in dump_links()}
    return {name: str(replace(mark, instance=None)) for name, mark in marks.items() if mark is not None}


def test_invalid_spec_never_deletes_what_it_used_to_describe(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=3))
    write(specs / "vms.yaml", vm_spec("vm-a") + "---\n" + vm_spec("vm-b"))
    assert warmvm(specs, state, "reconcile").returncode == 0
    before = our_links()
    # vm-b's file breaks, vm-a goes away and the pool shrinks: nothing may be deleted
    write(specs / "vms.yaml", vm_spec("vm-b", diskSize="lots"))
    write(specs / "net.yaml", network_spec(size=1))
    plan = warmvm(specs, state, "plan")
    assert plan.returncode == 1 and "held back" in plan.stdout
    result = warmvm(specs, state, "reconcile")
    assert result.returncode == 1
    assert "vms.yaml:6: spec.diskSize: 'lots' is not a quantity" in result.stderr
    assert "Traceback" not in result.stderr
    assert our_links() == before
    # fixed: now the deletions go through
    write(specs / "vms.yaml", vm_spec("vm-b"))
    assert warmvm(specs, state, "reconcile").returncode == 0
    after = our_links()
    assert "warmvm:vm:default:vm-a" not in after.values() and len(after) == 1 + 1 + 1  # bridge, vm-b, 1 idle


def test_plan_exit_codes(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    assert warmvm(specs, state, "plan").returncode == 2
    assert warmvm(specs, state, "reconcile").returncode == 0
    assert warmvm(specs, state, "plan").returncode == 0


def test_second_reconciler_waits_then_gives_up_clearly(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    with Store(state).lock(timeout=1):
        result = warmvm(specs, state, "--lock-timeout", "0.3", "reconcile")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("another warmvm holds the lock; gave up after 0.3s (--lock-timeout)")
    assert not our_links(), "the waiting reconciler must not have acted"
    assert warmvm(specs, state, "reconcile").returncode == 0


def test_json_log_and_get_output(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2))
    write(specs / "vm.yaml", vm_spec("vm-a"))
    result = warmvm(specs, state, "--log-format", "json", "reconcile")
    records = [json.loads(line) for line in result.stderr.splitlines()]
    stages = [r["stage"] for r in records if "stage" in r]
    assert stages[0] == "bridge_ensure" and "tap_claim" in stages
    assert all(r["outcome"] == "ok" and r["ms"] >= 0 for r in records if "stage" in r)
    assert records[-1]["converged"] is True
    vms = json.loads(warmvm(specs, state, "get", "vms", "-o", "json").stdout)
    assert vms[0]["name"] == "vm-a" and vms[0]["tap"].startswith("tap-pool-")
    nets = json.loads(warmvm(specs, state, "get", "networks", "-o", "json").stdout)
    assert nets[0]["idle"] == 2 and nets[0]["vms"] == 1 and nets[0]["bridgeState"] == "up"


def test_watch_converges_on_every_spec_change_and_stops_on_sigterm(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    cmd = command(specs, state, "watch", "--poll", "0.05", "--interval", "600")
    daemon = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        write(specs / "net.yaml", network_spec(size=2))
        wait_for(lambda: len([a for a in our_links().values() if a == "warmvm:pool:default"]) == 2)
        write(specs / "net.yaml", network_spec(size=5))
        wait_for(lambda: len([a for a in our_links().values() if a == "warmvm:pool:default"]) == 5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert err.count("reconcile: converged") >= 2
