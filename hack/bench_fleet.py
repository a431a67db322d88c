"""The fleet benchmark (make bench-fleet, hack/bench-fleet.sh): a 3-member etcd and N agents, each host a
network namespace of its own (hack/fleet.py), all removed afterwards.

1. placement: `fleet apply` of --vms VMs (running: false) onto --hosts agents: placements per second,
   apply-to-assigned and apply-to-provisioned per VM (p50/p95/p99; from the store's own watch stream,
   the spec's write to its placement's write, and to its host's first `Stopped` status), CAS conflicts
   (the agents' own counters);
2. idle: store writes per second while nothing changes (key writes seen by a watch; keep-alives are not
   key writes) and status writes;
3. overhead: one real VM's spec-to-SSH (its first `ssh true`) under the fleet against `warmvm watch` on
   the same specs in a plain namespace, interleaved, warm (seed and pool ready) in both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_IMAGE, HACK, REPO, document, image_document, summary

CLI = [sys.executable, "-m", "controller"]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {**summary(values), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


class Lab:
    """The cluster, its hosts and their agents."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root, self.prefix, self.dir = root, prefix, root / "etcd"
        self.agents: list[subprocess.Popen[bytes]] = []
        up = subprocess.run(["bash", str(HACK / "fleet-up.sh"), "3", "--netns", prefix, "--dir", str(self.dir)],
                            capture_output=True, text=True, check=True)
        self.endpoints = up.stdout.strip().splitlines()[-1]
        self.env = {**os.environ, "WARMVM_STORE": self.endpoints}

    def host(self, name: str, *extra: str) -> str:
        ns = subprocess.run([sys.executable, str(HACK / "fleet.py"), "host", name, "--dir", str(self.dir)],
                            capture_output=True, text=True, check=True).stdout.strip()
        state = self.root / f"state-{name}"
        log = open(self.root / f"agent-{name}.log", "ab")  # noqa: SIM115  (the child keeps it)
        self.agents.append(subprocess.Popen(["ip", "netns", "exec", ns, *CLI, "--state", str(state), "--log-format",
                                             "json", "agent", "--host", name, "--metrics-addr", "127.0.0.1:9464",
                                             *extra], stdout=log, stderr=log, cwd=REPO, env=self.env))
        return ns

    def hub(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", f"{self.prefix}-hub", *CLI, *args], capture_output=True,
                              text=True, cwd=REPO, env=self.env, check=True)

    def metric(self, ns: str, name: str) -> float:
        code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())"
        text = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                              text=True, check=True).stdout
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    def down(self) -> None:
        for agent in self.agents:
            agent.terminate()
        for agent in self.agents:
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
        subprocess.run(["bash", str(HACK / "fleet-down.sh"), "--dir", str(self.dir)], capture_output=True)


class Recorder:
    """When each key under /warmvm/ was written, as a watch (in the hub) sees it."""

    def __init__(self, lab: Lab) -> None:
        self.first: dict[str, float] = {}  # key -> the first time it was written
        self.events: list[tuple[float, str, bytes | None]] = []
        self.stop = threading.Event()
        code = ("import sys, json, time, threading\n"
                "from controller.adapters.etcd import Etcd\n"
                "s = Etcd(sys.argv[1].split(','))\n"
                "for batch in s.watch('/warmvm/', s.range('/warmvm/')[1] + 1, threading.Event()):\n"
                "    for e in batch:\n"
                "        print(json.dumps([time.time(), e.key, e.value.decode() if e.value else None]), flush=True)\n")
        self.proc = subprocess.Popen(["ip", "netns", "exec", f"{lab.prefix}-hub", sys.executable, "-c", code,
                                      lab.endpoints], stdout=subprocess.PIPE, cwd=REPO, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.5)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            when, key, value = json.loads(line)
            self.events.append((when, key, value.encode() if value is not None else None))
            self.first.setdefault(key, when)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def specs_dir(root: Path, vms: int) -> Path:
    specs = root / "specs"
    specs.mkdir(mode=0o755)
    (specs / "net.yaml").write_text(document("Network", "default", bridge="wvbr0", cidr="10.88.0.0/20",
                                             tapPool="{size: 1}"))
    (specs / "image.yaml").write_text(image_document("demo", DEMO_IMAGE, "vmlinuz", f"{{from: {DEMO_IMAGE}/root}}",
                                                     default="true"))
    for i in range(vms):
        (specs / f"vm-{i:03}.yaml").write_text(document("VM", f"vm-{i:03}", running="false", diskSize="64Mi",
                                                        memory="64Mi"))
    return specs


def placement(lab: Lab, root: Path, vms: int, hosts: list[str]) -> dict[str, Any]:
    rec = Recorder(lab)
    specs = specs_dir(root, vms)
    started = time.time()
    lab.hub("fleet", "apply", "-f", str(specs))
    names = [f"vm-{i:03}" for i in range(vms)]
    deadline = time.time() + 600
    while time.time() < deadline and not all(_stopped(rec, n) for n in names):
        time.sleep(0.2)
    assigned = [rec.first[f"/warmvm/placement/{n}"] - rec.first[f"/warmvm/spec/vm/{n}"] for n in names]
    provisioned = [_stopped(rec, n) - rec.first[f"/warmvm/spec/vm/{n}"] for n in names if _stopped(rec, n)]
    placed_at = [rec.first[f"/warmvm/placement/{n}"] for n in names]
    rec.close()
    return {"vms": vms, "hosts": len(hosts),
            "placements_per_s": vms / max(1e-3, max(placed_at) - min(rec.first[f"/warmvm/spec/vm/{n}"] for n in names)),
            "all_placed_s": max(placed_at) - started,
            "apply_to_assigned_ms": percentiles([a * 1000 for a in assigned]),
            "apply_to_provisioned_ms": percentiles([p * 1000 for p in provisioned]),
            "provisioned": len(provisioned),
            "cas_conflicts": sum(lab.metric(ns, "warmvm_fleet_placement_conflicts_total") for ns in hosts)}


def _stopped(rec: Recorder, vm: str) -> float:
    """When a host first reported `vm` Stopped (provisioned, running: false); 0 if not yet."""
    for when, key, value in rec.events:
        if key.endswith(f"/{vm}") and key.startswith("/warmvm/status/") and value and b'"Stopped"' in value:
            return when
    return 0.0


def idle(lab: Lab, hosts: list[str], seconds: float) -> dict[str, Any]:
    writes = [lab.metric(ns, "warmvm_fleet_status_writes_total") for ns in hosts]
    rec = Recorder(lab)
    time.sleep(seconds)
    rec.close()
    after = [lab.metric(ns, "warmvm_fleet_status_writes_total") for ns in hosts]
    return {"seconds": seconds, "store_writes_per_s": len(rec.events) / seconds,
            "status_writes": sum(after) - sum(writes), "lease_keepalives_per_s": len(hosts) / 5.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=5)
    ap.add_argument("--vms", type=int, default=300)
    ap.add_argument("--idle", type=float, default=30.0, metavar="SECONDS")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="warmvm-bench-fleet-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o700)
        lab = Lab(root, f"wfb{os.getpid() % 10000}")
        try:
            hosts = [lab.host(f"h{i}", "--capacity", "vcpus=256,memory=64Gi") for i in range(1, args.hosts + 1)]
            time.sleep(2)
            out = {"placement": placement(lab, root, args.vms, hosts), "idle": idle(lab, hosts, args.idle)}
        finally:
            lab.down()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
