"""The create benchmark's script cannot rot: one run, one VM, one mode, small /root.

This boots a real VM under QEMU (in the benchmark's own namespace and state
directory); it asserts the shape of the report, never a timing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .support.cli import REPO

pytestmark = pytest.mark.e2e
STAGES = {"ip", "tap", "disk", "qemu_start", "boot", "controller", "total"}


def test_bench_smoke_run_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(REPO / "hack" / "bench.sh"), "--runs", "1", "--vms", "1", "--modes", "warm,restore,reference",
                             "--root-mib", "8", "--files", "100", "--disk-size", "256Mi", "--exec-runs", "2",
                             "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=REPO, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "bench-create.json").read_text())
    assert set(report["modes"]) == {"warm", "restore", "reference"}
    assert report["modes"]["reference"]["stats"]["total"]["median"] > 0 and "warm_over_reference" in report
    # ready over the channel, whose answer may come before the console's ready line ("sshd") is read
    assert [s for s in report["modes"]["warm"]["timeline"] if s != "sshd"] == ["kernel", "initramfs", "root_mounted",
                                                                                "init", "network", "channel"]
    warm = report["modes"]["warm"]
    assert set(warm["stats"]) == STAGES
    assert all(set(s) >= {"min", "median", "max"} for s in warm["stats"].values())
    (vm,) = warm["vms"]
    assert STAGES <= set(vm) and vm["disk_path"].startswith("seed:") and vm["tap_from"] == "pool"
    assert 0 < vm["controller"] < vm["total"] and vm["boot"] > 0
    assert (out / "bench-create.png").stat().st_size > 10_000
    assert "warm controller share" in result.stdout
    (restored,) = report["modes"]["restore"]["vms"]
    assert restored["boot_how"] == "restore" and "identity" in restored["timeline"] and "restore_over_warm" in report
    (snapshot,) = report["snapshots"]
    assert snapshot["size"] > 0 and snapshot["generate_ms"] > 0
    exec_vs_ssh = report["exec_vs_ssh"]
    assert exec_vs_ssh["readiness"] == "channel" and exec_vs_ssh["vm_boot"] == "restore"
    assert all(exec_vs_ssh[k]["n"] == 2 for k in ("exec_ms", "exec_channel_ms", "ssh_ms"))
    assert report["restore_create_to_first_ssh_ms"]["median"] > 0 and "restore create to first SSH" in result.stdout
    assert report["verify"]["clean"], report["verify"]["leaks"]  # the bench leaves nothing behind
