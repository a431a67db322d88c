"""The state's tmp area is cleaned only of what dead writers left: a record a live writer (the daemon's
own boot wait, beside its passes) is still making there is never taken from under it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .support.cli import reconcile
from .support.images import fake_host


def test_a_reconcile_removes_what_dead_writers_left_and_never_what_a_live_writer_makes(netns: str,
                                                                                        tmp_path: Path) -> None:
    specs, state = fake_host(tmp_path, pool_size=0)
    reconcile(specs, state)
    writer = subprocess.Popen(["sleep", "60"])  # stands for another process of warmvm, mid-write
    try:
        live = state / "tmp" / f"vm.json.{writer.pid}.abc123"
        dead = state / "tmp" / "vm.json.999999999.def456"  # no such process
        legacy = state / "tmp" / "leftover.part"  # from before entries named their writer
        for path in (live, dead, legacy):
            path.write_text("{}")
        reconcile(specs, state)
        assert live.exists(), "a live writer's file is its own"
        assert not dead.exists() and not legacy.exists()
    finally:
        writer.kill()
        writer.wait()
    reconcile(specs, state)
    assert not live.exists(), "once its writer is gone, the next reconcile cleans it"
