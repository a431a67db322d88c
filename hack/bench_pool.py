"""TAP pool benchmark; run by hack/bench-pool.sh inside a throwaway namespace.

1. warm-up: reconcile an empty host to a pool of 1000 TAPs;
2. no-op: reconcile again with the 1000 TAPs present (in-process and as a CLI);
3. start-up: `warmvm plan` as a whole process with a 100-TAP pool and nothing to do,
   interleaved with a bare `python -c pass` for scale;
4. naming: allocate 100 names past 1000 foreign same-prefix devices, counting
   the kernel calls spent on names, next to libvirt's one-by-one probing.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import network_document, summary_as, timed

from controller.adapters.netlink.rtnl import dump_links
from controller.adapters.tun import open_exclusive, persist
from controller.base.events import Lifecycle
from controller.engine.converge import load_specs
from controller.engine.host import open_host
from controller.engine.reconcile import reconcile
from controller.engine.state import Observed
from controller.network.driver import NetworkDriver
from controller.network.marks import pool_mark
from controller.network.observe import observe_net
from controller.statedir.store import Store

SIOCGIFFLAGS = 0x8913


def run(specs: Path, size: int, prefix: str = "tap-pool-") -> float:
    (specs / "net.yaml").write_text(network_document("wvbench0", "10.77.0.0/16", size, prefix=prefix))
    host = open_host(Store(specs.parent / "state"), prepare=True)
    drivers = host.drivers()
    log = Lifecycle(stream=open(os.devnull, "w"))
    start = time.perf_counter()
    desired = load_specs(specs)
    result = reconcile(desired, drivers, host.observer(desired), log)
    elapsed = time.perf_counter() - start
    drivers.close()
    assert result.converged, result.failures
    return elapsed


def raw_tap(name: str) -> None:
    """A persistent TAP without a mark: a foreign device, to warmvm."""
    fd = open_exclusive(name)
    persist(fd)
    os.close(fd)


def libvirt_probe(prefix: str, count: int) -> tuple[int, float]:
    """libvirt's old way: for each new device, probe prefix0, prefix1, ... until one is free."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    calls = 0
    start = time.perf_counter()
    for _ in range(count):
        index = 0
        while True:
            calls += 1
            try:
                fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16s24x", f"{prefix}{index}".encode()))
                index += 1
            except OSError:
                break
        raw_tap(f"{prefix}{index}")
    sock.close()
    return calls, time.perf_counter() - start


def startup(specs: Path, state: Path, runs: int) -> dict[str, float]:
    """`warmvm plan` as users run it (the installed script), against the interpreter alone."""
    script = Path(sys.executable).parent / "warmvm"
    plan = [str(script)] if script.exists() else [sys.executable, "-m", "controller"]
    commands = {"plan": [*plan, "--specs", str(specs), "--state", str(state), "plan"],
                "python": [sys.executable, "-c", "pass"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(runs):
        for key, argv in commands.items():
            start = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, check=False)
            times[key].append((time.perf_counter() - start) * 1000)
            assert key != "plan" or done.returncode == 0, done.stderr
    return {**summary_as("plan_cli_ms_{}", times["plan"]), "python_ms_median": statistics.median(times["python"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--taps", type=int, default=1000)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        specs = Path(tmp) / "specs"
        specs.mkdir()
        out["warmup_s"] = run(specs, args.taps)
        owner = Store(specs.parent / "state").instance(create=False)
        out["taps"] = len([l for l in dump_links() if l.alias == str(pool_mark(owner, "bench"))])
        out.update(summary_as("noop_ms_{}", [run(specs, args.taps) * 1000 for _ in range(args.runs)]))
        reconcile_cli = [sys.executable, "-m", "controller", "--specs", str(specs), "--state", f"{tmp}/state",
                         "reconcile"]
        cli = [timed(lambda: subprocess.run(reconcile_cli, check=True, capture_output=True)) for _ in range(3)]
        out["noop_cli_ms_median"] = statistics.median(cli)
        run(specs, 100)
        out.update(startup(specs, Path(tmp) / "state", args.runs * 3))
        run(specs, 0)  # empty the pool again

        for i in range(args.taps):
            raw_tap(f"tap-pool-{i}")  # foreign: no mark
        driver = NetworkDriver(owner or "")
        driver.prepare(Observed(net=observe_net(owner)))
        out["alloc_ms"] = timed(lambda: driver.create_taps("tap-pool-", args.names, pool_mark(owner, "bench"),
                                                           "wvbench0"))
        out["alloc_calls_per_name"] = driver.name_calls / args.names
        driver.close()
        calls, seconds = libvirt_probe("tap-probe-", 0)  # warm the code path
        for i in range(args.taps):
            raw_tap(f"tap-probe-{i}")
        calls, seconds = libvirt_probe("tap-probe-", args.names)
        out["probe_calls_per_name"] = calls / args.names
        out["probe_ms"] = seconds * 1000

    print(f"warm-up of {out['taps']:.0f} TAPs:           {out['warmup_s']:.2f} s   (target <= 1.5 s)")
    print(f"no-op reconcile, {args.taps} TAPs:      {out['noop_ms_median']:.1f} ms median "
          f"({out['noop_ms_min']:.1f}-{out['noop_ms_max']:.1f}) in-process; {out['noop_cli_ms_median']:.0f} ms "
          "as a CLI process (target <= 100 ms)")
    print(f"warmvm plan, 100-TAP pool:      {out['plan_cli_ms_median']:.0f} ms median "
          f"({out['plan_cli_ms_min']:.0f}-{out['plan_cli_ms_max']:.0f}) as a whole process; python -c pass "
          f"{out['python_ms_median']:.0f} ms (target <= 150 ms)")
    print(f"{args.names} names past {args.taps} foreign: {out['alloc_calls_per_name']:.2f} kernel calls/name, "
          f"{out['alloc_ms']:.1f} ms (target <= 1.1 calls/name)")
    print(f"  libvirt-style probing:        {out['probe_calls_per_name']:.0f} calls/name, {out['probe_ms']:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
