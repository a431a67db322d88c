"""One summary of every benchmark's JSON (written by hack/bench-all.sh), with its target.

    hack/bench_summary.py [OUTDIR]   (default: state/bench-out of this checkout)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchlib import BENCH_OUT


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def main(out: Path) -> None:
    rows: list[tuple[str, str, str]] = []
    pool = load(out / "pool.json")
    if pool:
        rows += [("pool: warm-up of 1000 TAPs", f"{pool['warmup_s']:.2f} s", "<= 1.5 s"),
                 ("pool: no-op reconcile, 1000 TAPs", f"{pool['noop_ms_median']:.1f} ms", "<= 100 ms"),
                 ("start-up: warmvm plan, 100-TAP pool",
                  f"{pool['plan_cli_ms_median']:.0f} ms (python alone {pool['python_ms_median']:.0f} ms)", "<= 150 ms"),
                 ("pool: kernel calls per name", f"{pool['alloc_calls_per_name']:.2f}", "<= 1.1"),
                 ("pool: libvirt-style probing", f"{pool['probe_calls_per_name']:.0f} calls/name", "-")]
    watch = load(out / "watch.json")
    if watch:
        for label, key, target in (("spec written -> first action", "spec_to_action_ms", "<= 150 ms"),
                                   ("pool TAP deleted -> replaced", "tap_deleted_to_replaced_ms", "<= 500 ms"),
                                   ("QEMU killed -> respawned", "qemu_killed_to_respawned_ms", "<= 500 ms")):
            if key in watch:
                s = watch[key]
                rows.append((f"daemon: {label}", f"{s['median']:.1f} ms ({s['min']:.1f}-{s['max']:.1f})", target))
        if "refill_before_boot" in watch:
            rows.append(("daemon: pool refill to 100 beside a boot",
                         f"{watch['refill_100_ms']:.0f} ms vs boot {watch['boot_beside_refill_ms']:.0f} ms",
                         "refill first"))
        if "idle_cpu_percent" in watch:
            rows.append(("daemon: idle CPU", f"{watch['idle_cpu_percent']:.2f} %", "<= 1%"))
    disk = load(out / "disk.json")
    if disk:
        for r in disk["results"]:
            if r.get("scratch_ratio"):
                rows.append((f"disk: {r['step']} on {r['fs']}", f"{r['scratch_ratio']:.0f}x faster than scratch",
                             ">= 20x"))
    for name in ("create-host", "create-xfs", "create-xfs-8"):
        report = load(out / name / "bench-create.json")
        if not report:
            continue
        cfg = report["config"]
        label = f"create ({cfg['state_fs']}, {cfg['vms']} VM)"
        if report.get("disk_and_tap_cold_over_warm"):
            rows.append((f"{label}: disk+TAP cold/warm", f"{report['disk_and_tap_cold_over_warm']:.0f}x", ">= 10x"))
        if "warm_controller_median_ms" in report:
            rows.append((f"{label}: warm controller share", f"{report['warm_controller_median_ms']:.1f} ms",
                         "<= 50 ms (xfs)"))
        for mode, data in report["modes"].items():
            total = data["stats"]["total"]
            rows.append((f"{label}: {mode} total per VM",
                         f"{total['median'] / 1000:.2f} s ({total['min'] / 1000:.2f}-{total['max'] / 1000:.2f})", "-"))
    width = max(len(r[0]) for r in rows) if rows else 10
    print("\nwarmvm benchmarks")
    for what, value, target in rows:
        print(f"  {what:<{width}}  {value:<32} target {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH_OUT)
