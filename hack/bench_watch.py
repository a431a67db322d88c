"""The daemon benchmark; run by hack/bench-watch.sh inside a throwaway network namespace.

With `warmvm watch` running (a real process, JSON logs):
1. a spec written -> the first action applied (target: median <= 150 ms);
2. an owned pool TAP deleted with `ip link del` -> its replacement up (<= 500 ms);
3. a QEMU SIGKILLed -> its replacement spawned (<= 500 ms);
4. a VM created while the pool grows to 100: the refill must finish before the boot does;
5. the idle daemon's CPU over --idle seconds (<= 1%: no busy polling).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_IMAGE, REPO, document, image_document, network_document, summary

from controller.adapters.netlink.rtnl import dump_links
from controller.network.marks import parse_mark


def network(size: int) -> str:
    """The bench's Network spec, with a TAP pool of `size`."""
    return network_document("wvwatch0", "10.98.0.0/24", size)


class Daemon:
    def __init__(self, specs: Path, state: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--specs", str(specs), "--state", str(state), "--log-format",
             "json", "watch", "--interval", "3600"], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.records: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                self.records.append(json.loads(line))

    def first_action_after(self, t0: float, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in list(self.records):
                if "stage" in r and r["outcome"] == "ok" and r["time"] >= t0:
                    return (r["time"] - t0) * 1000
            time.sleep(0.002)
        raise SystemExit("bench-watch: no action after the spec was written")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def pool(state: Path) -> list[tuple[int, bool]]:
    """The pool's TAPs as (ifindex, up): a replacement may reuse the deleted one's name, never its index."""
    instance = (state / "instance").read_text().strip()
    return [(l.index, l.up) for l in dump_links()
            if (m := parse_mark(l.alias)) is not None and m.instance == instance and m.role == "pool"]


def until(condition: Any, timeout: float = 30, what: str = "") -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"bench-watch: timed out waiting for {what or condition} ({debug()})")
        time.sleep(0.001)
    return (time.monotonic() - start) * 1000


STATE: list[Path] = []


def debug() -> str:
    return str(pool(STATE[0])) if STATE else ""


def replaced(state: Path, victim: int, size: int) -> bool:
    taps = pool(state)
    return len(taps) == size and all(up for _, up in taps) and victim not in {n for n, _ in taps}


def qemus(state: Path) -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes()
                if argv.startswith(b"qemu-system") and str(state).encode() in argv:
                    found.add(int(proc.name))
            except OSError:
                pass
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--idle", type=float, default=60.0, help="seconds to measure the idle daemon's CPU over")
    ap.add_argument("--image", type=Path, default=DEMO_IMAGE)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        specs, state = Path(tmp) / "specs", Path(tmp) / "state"
        specs.mkdir()
        STATE.append(state)
        (specs / "net.yaml").write_text(network(size=2))
        daemon = Daemon(specs, state)
        try:
            until(lambda: state.joinpath("instance").exists() and len(pool(state)) == 2, what="the first pool")
            time.sleep(0.5)
            spec_ms = []
            for i in range(args.runs):
                t0 = time.time()
                (specs / "net.yaml").write_text(network(size=3 + i))
                spec_ms.append(daemon.first_action_after(t0))
                until(lambda i=i: len(pool(state)) == 3 + i, what=f"a pool of {3 + i}")
                time.sleep(0.3)
            out["spec_to_action_ms"] = summary(spec_ms)
            tap_ms = []
            for _ in range(args.runs):
                size = len(pool(state))
                victim = sorted(pool(state))[0][0]
                name = next(l.name for l in dump_links() if l.index == victim)
                start = time.monotonic()
                subprocess.run(["ip", "link", "del", name], check=True)
                until(lambda v=victim, n=size: replaced(state, v, n), what="the deleted TAP's replacement")
                tap_ms.append((time.monotonic() - start) * 1000)
                time.sleep(0.3)
            out["tap_deleted_to_replaced_ms"] = summary(tap_ms)
            if (args.image / "vmlinuz").exists():
                out.update(vm_figures(specs, state, args.image, args.runs))
            time.sleep(2)
            before, start = daemon.cpu_seconds(), time.monotonic()
            time.sleep(args.idle)
            out["idle_cpu_percent"] = (daemon.cpu_seconds() - before) / (time.monotonic() - start) * 100
            out["idle_seconds"] = args.idle
        finally:
            for name in ("vm.yaml", "image.yaml"):
                (specs / name).unlink(missing_ok=True)
            (specs / "net.yaml").write_text(network(size=0))
            time.sleep(3)
            daemon.stop()
            for pid in qemus(state):
                os.kill(pid, signal.SIGKILL)
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def vm_figures(specs: Path, state: Path, image: Path, runs: int) -> dict[str, Any]:
    (specs / "image.yaml").write_text(image_document("demo", image, "vmlinuz", f"{{from: {image}/root}}",
                                                     default="true"))
    ready = state / "vms" / "vm-a" / "vm.json"

    def is_ready() -> bool:
        try:
            return json.loads(ready.read_text()).get("ready") is not None
        except (OSError, ValueError):
            return False

    # a VM created while the pool grows to 100: the refill finishes before the boot
    start = time.monotonic()
    (specs / "net.yaml").write_text(network(size=100))
    (specs / "vm.yaml").write_text(document("VM", "vm-a", diskSize="256Mi"))
    refill_ms = until(lambda: len(pool(state)) == 100, timeout=120)
    boot_ms = until(is_ready, timeout=240) + refill_ms
    kill_ms = []
    for _ in range(min(runs, 5)):
        (old,) = qemus(state)
        begin = time.monotonic()
        os.kill(old, signal.SIGKILL)
        until(lambda o=old: bool(qemus(state) - {o}), timeout=30)
        kill_ms.append((time.monotonic() - begin) * 1000)
        until(is_ready, timeout=240)
    return {"refill_100_ms": refill_ms, "boot_beside_refill_ms": boot_ms,
            "refill_before_boot": refill_ms < boot_ms, "qemu_killed_to_respawned_ms": summary(kill_ms),
            "create_span_ms": (time.monotonic() - start) * 1000}


def report(out: dict[str, Any]) -> None:
    def line(label: str, key: str, target: str) -> None:
        if key in out:
            s = out[key]
            print(f"{label:<40}{s['median']:8.1f} ms median ({s['min']:.1f}-{s['max']:.1f}, n={s['n']})  "
                  f"target {target}")
    line("spec written -> first action", "spec_to_action_ms", "<= 150 ms")
    line("pool TAP deleted -> replaced and up", "tap_deleted_to_replaced_ms", "<= 500 ms")
    line("QEMU SIGKILLed -> replacement spawned", "qemu_killed_to_respawned_ms", "<= 500 ms")
    if "refill_100_ms" in out:
        print(f"{'pool refill to 100 beside a VM boot':<40}{out['refill_100_ms']:8.1f} ms, boot "
              f"{out['boot_beside_refill_ms']:.0f} ms: refill first: {out['refill_before_boot']}")
    if "idle_cpu_percent" in out:
        print(f"{'idle daemon CPU':<40}{out['idle_cpu_percent']:8.3f} % over {out['idle_seconds']:.0f} s  target <= 1%")


if __name__ == "__main__":
    main()
