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
        self.started: dict[str, tuple[str, list[str]]] = {}  # host -> its namespace and agent command
        up = subprocess.run(["bash", str(HACK / "fleet-up.sh"), "3", "--netns", prefix, "--dir", str(self.dir)],
                            capture_output=True, text=True, check=True)
        self.endpoints = up.stdout.strip().splitlines()[-1]
        self.env = {**os.environ, "WARMVM_STORE": self.endpoints}

    def host(self, name: str, *extra: str) -> str:
        ns = subprocess.run([sys.executable, str(HACK / "fleet.py"), "host", name, "--dir", str(self.dir)],
                            capture_output=True, text=True, check=True).stdout.strip()
        state = self.root / f"state-{name}"
        self.started[name] = (ns, ["ip", "netns", "exec", ns, *CLI, "--state", str(state), "--log-format", "json",
                                   "agent", "--host", name, "--metrics-addr", "127.0.0.1:9464", *extra])
        self.start(name)
        return ns

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """The host's agent (again, on its own state directory)."""
        log = open(self.root / f"agent-{name}.log", "ab")  # noqa: SIM115  (the child keeps it)
        agent = subprocess.Popen(self.started[name][1], stdout=log, stderr=log, cwd=REPO, env=self.env)
        self.agents.append(agent)
        return agent

    def hub(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ip", "netns", "exec", f"{self.prefix}-hub", *CLI, *args], capture_output=True,
                              text=True, cwd=REPO, env=self.env)
        if done.returncode != 0:
            raise SystemExit(f"bench-fleet: warmvm {' '.join(args)}: {done.stderr.strip()}")
        return done

    def metric(self, ns: str, name: str) -> float:
        code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())"
        text = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                              text=True, check=True).stdout
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    def down(self) -> None:
        for member in json.loads((self.dir / "cluster.json").read_text())["members"]:
            if not Path(f"/proc/{member['pid']}").exists():  # say why a member is gone before its log goes
                log = (self.dir / f"{member['name']}.log").read_text(errors="replace").splitlines()
                print(f"bench-fleet: etcd member {member['name']} died:", *log[-5:], sep="\n  ", file=sys.stderr)
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


def single(lab: Lab, root: Path, runs: int) -> dict[str, Any]:
    """One VM applied at a time to the idle fleet: apply-to-assigned as a user creating one VM sees it."""
    rec = Recorder(lab)
    specs = root / "single"
    specs.mkdir(mode=0o755)
    for i in range(runs):
        (specs / "vm.yaml").write_text(document("VM", f"one-{i}", running="false", diskSize="64Mi", memory="64Mi"))
        lab.hub("fleet", "apply", "-f", str(specs))
        deadline = time.time() + 30
        while f"/warmvm/placement/one-{i}" not in rec.first and time.time() < deadline:
            time.sleep(0.01)
    rec.close()
    return {"apply_to_assigned_ms": percentiles([(rec.first[f"/warmvm/placement/one-{i}"]
                                                  - rec.first[f"/warmvm/spec/vm/one-{i}"]) * 1000
                                                 for i in range(runs)])}


def ready_at(log: Path, vm: str, after: float) -> float:
    """When the controller saw `vm` ready (its vm_await ok, from a JSON lifecycle log); 0 if not yet."""
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("stage") == "vm_await" and record.get("object") == f"vm/{vm}" and \
                record.get("outcome") == "ok" and record["time"] > after and not record.get("superseded"):
            return float(record["time"])
    return 0.0


def overhead(lab: Lab, root: Path, runs: int) -> dict[str, Any]:
    """One real VM's spec to ready (the controller's own first SSH command), through the fleet (a host of
    its own, warm) and through `warmvm watch` on local specs (warm too), interleaved."""
    lab.host("probe", "--labels", "role=probe")
    fleet_log = root / "agent-probe.log"
    local = root / "local"
    (local / "specs").mkdir(parents=True, mode=0o755)
    (local / "specs" / "base.yaml").write_text((root / "specs" / "net.yaml").read_text() + "---\n"
                                               + (root / "specs" / "image.yaml").read_text())
    ns = f"{lab.prefix}-local"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    daemon = subprocess.Popen(["ip", "netns", "exec", ns, *CLI, "--specs", str(local / "specs"), "--state",
                               str(local / "state"), "--log-format", "json", "watch"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=open(local / "watch.log", "ab"))  # noqa: SIM115
    probe = root / "probe"
    probe.mkdir(mode=0o755)
    try:
        time.sleep(15)  # both warm: seeds generated, pools filled
        times: dict[str, list[float]] = {"local": [], "fleet": [], "stored": []}
        rec = Recorder(lab)
        for i in range(runs):
            name = f"probe-{i}"
            vm = document("VM", name, memory="256Mi", diskSize="256Mi", hostSelector="{role: probe}")
            start = time.time()
            (local / "specs" / "vm.yaml").write_text(vm)
            times["local"].append(_await(local / "watch.log", name, start) - start)
            (local / "specs" / "vm.yaml").unlink()
            (probe / "vm.yaml").write_text(vm)
            start = time.time()
            lab.hub("fleet", "apply", "-f", str(probe))
            ready = _await(fleet_log, name, start)
            times["fleet"].append(ready - start)
            times["stored"].append(ready - rec.first[f"/warmvm/spec/vm/{name}"])
            lab.hub("fleet", "delete", "vm", name)
            time.sleep(3)  # both VMs stopped and trashed before the next round
        rec.close()
    finally:
        daemon.terminate()
        daemon.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    local_ms, fleet_ms, stored_ms = ([x * 1000 for x in times[k]] for k in ("local", "fleet", "stored"))
    return {"runs": runs, "local_spec_to_ready_ms": summary(local_ms), "fleet_spec_to_ready_ms": summary(fleet_ms),
            "fleet_overhead_ms": summary([f - lo for f, lo in zip(fleet_ms, local_ms, strict=True)]),
            # the same from the spec's arrival in the store: without the `fleet apply` command's own start-up
            "fleet_stored_to_ready_ms": summary(stored_ms),
            "fleet_overhead_from_store_ms": summary([s - lo for s, lo in zip(stored_ms, local_ms, strict=True)])}


def _await(log: Path, vm: str, after: float, timeout: float = 180) -> float:
    deadline = time.time() + timeout
    while not (when := ready_at(log, vm, after)):
        if time.time() > deadline:
            raise SystemExit(f"bench-fleet: {vm} was not ready within {timeout:g}s (see {log})")
        time.sleep(0.05)
    return when


def failover(lab: Lab, root: Path, runs: int, ttl: int = 5, lost_after: int = 10) -> dict[str, Any]:
    """A `recreate` VM whose agent is killed (-9): the host's lease expiring, the VM placed anew, and
    created (provisioned, running: false) on the other host; the killed agent then starts again."""
    agents = {name: lab.host(name, "--lease-ttl", str(ttl), "--labels", "role=failover") for name in ("f1", "f2")}
    specs = root / "failover"
    specs.mkdir(mode=0o755)
    parts: dict[str, list[float]] = {"lease_expiry_ms": [], "placement_ms": [], "create_ms": [], "total_ms": []}
    time.sleep(ttl)
    for i in range(runs):
        vm = f"fo-{i}"
        (specs / "vm.yaml").write_text(document("VM", vm, running="false", diskSize="64Mi", onHostLoss="recreate",
                                                lostAfter=f"{lost_after}s", hostSelector="{role: failover}"))
        rec = Recorder(lab)
        lab.hub("fleet", "apply", "-f", str(specs))
        host = _until(lambda: next((k.split("/")[3] for _, k, v in rec.events if k.endswith(f"/{vm}")  # noqa: B023  (called at once)
                                    and k.startswith("/warmvm/status/") and v and b'"Stopped"' in v), None))
        agent = next(a for a in reversed(lab.agents) if a.args == lab.started[host][1] and a.poll() is None)
        start = time.time()
        agent.kill()
        agent.wait()
        other = next(h for h in agents if h != host)
        ready = _until(lambda: next((w for w, k, v in rec.events if w > start and k == f"/warmvm/status/{other}/{vm}"  # noqa: B023  (called at once)
                                     and v and b'"Stopped"' in v), None), timeout=120, what=f"{vm} recreated")
        expired = next(w for w, k, v in rec.events if w > start and k == f"/warmvm/host/{host}/alive" and v is None)
        placed = next(w for w, k, v in rec.events if w > start and k == f"/warmvm/placement/{vm}")
        for key, value in (("lease_expiry_ms", expired - start), ("placement_ms", placed - expired),
                           ("create_ms", ready - placed), ("total_ms", ready - start)):
            parts[key].append(value * 1000)
        rec.close()
        lab.start(host)
        lab.hub("fleet", "delete", "vm", vm)
        time.sleep(ttl)
    return {"runs": runs, "ttl_s": ttl, "lost_after_s": lost_after, **{k: summary(v) for k, v in parts.items()}}


def _until(probe: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.time() + timeout
    while (found := probe()) is None:
        if time.time() > deadline:
            raise SystemExit(f"bench-fleet: timed out waiting for {what}")
        time.sleep(0.05)
    return found


def leader_kill(lab: Lab) -> dict[str, Any]:
    """kill -9 of the etcd leader: how long writes fail (a write every 5 ms from the hub)."""
    members = json.loads((lab.dir / "cluster.json").read_text())["members"]
    status = json.loads(subprocess.run(["ip", "netns", "exec", f"{lab.prefix}-hub", "etcdctl", "--endpoints",
                                        lab.endpoints, "endpoint", "status", "-w", "json"], capture_output=True,
                                       text=True, check=True).stdout)
    leader = next(s["Endpoint"] for s in status if s["Status"]["leader"] == s["Status"]["header"]["member_id"])
    member = next(m for m in members if m["client"] == leader)
    code = ("import sys, time\nfrom controller.adapters.etcd import Etcd, Put\n"
            "s = Etcd(sys.argv[1].split(','), timeout=0.5)\nstart = time.time(); print('ready', flush=True)\n"
            "sys.stdin.readline(); start = time.time()\n"
            "while True:\n    try:\n        s.txn([], [Put('/bench/probe', b'1')]); break\n"
            "    except Exception:\n        time.sleep(0.005)\nprint((time.time() - start) * 1000)\n")
    probe = subprocess.Popen(["ip", "netns", "exec", f"{lab.prefix}-hub", sys.executable, "-c", code, lab.endpoints],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert probe.stdin is not None and probe.stdout is not None
    probe.stdout.readline()
    os.kill(int(member["pid"]), 9)
    probe.stdin.write("go\n")
    probe.stdin.flush()
    unavailable = float(probe.stdout.readline())
    probe.wait()
    subprocess.run([sys.executable, str(HACK / "fleet.py"), "restart", member["name"], "--dir", str(lab.dir)],
                   check=True)
    return {"killed": member["name"], "writes_failed_ms": unavailable}


def partition(lab: Lab, root: Path, host: str, seconds: float) -> dict[str, Any]:
    """A host cut off for `seconds`, then healed: its presence back, and its next pass done."""
    ns = lab.started[host][0]
    rec = Recorder(lab)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True)
    time.sleep(seconds)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    healed = time.time()
    _until(lambda: True if lab.metric(ns, "warmvm_fleet_store_up") == 1 else None, what=f"{host} reconnected")
    back = time.time()
    status = root / f"state-{host}" / "daemon.json"
    lease_expired = any(k == f"/warmvm/host/{host}/alive" and v is None for _, k, v in rec.events)
    passed = _until(lambda: (lp if (lp := json.loads(status.read_text()).get("last_pass") or 0) > healed else None),
                    what=f"{host}'s next pass") if lease_expired else back  # else it missed nothing: no pass
    rec.close()
    return {"seconds": seconds, "reconnect_ms": (back - healed) * 1000, "reconciled_ms": (passed - healed) * 1000,
            "lease_expired": lease_expired}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=5)
    ap.add_argument("--vms", type=int, default=300)
    ap.add_argument("--idle", type=float, default=30.0, metavar="SECONDS")
    ap.add_argument("--runs", type=int, default=3, help="runs of the one-VM measures (default 3)")
    ap.add_argument("--partition", type=float, default=30.0, metavar="SECONDS", help="how long a host is cut off")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="warmvm-bench-fleet-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o700)
        lab = Lab(root, f"wfb{os.getpid() % 10000}")
        try:
            hosts = [lab.host(f"h{i}", "--capacity", "vcpus=256,memory=64Gi") for i in range(1, args.hosts + 1)]
            time.sleep(2)
            phases: dict[str, Any] = {
                "placement": lambda: placement(lab, root, args.vms, hosts), "idle": lambda: idle(lab, hosts, args.idle),
                "single": lambda: single(lab, root, max(args.runs, 10)),
                "overhead": lambda: overhead(lab, root, args.runs),
                "failover": lambda: failover(lab, root, args.runs), "leader_kill": lambda: leader_kill(lab),
                "partition": lambda: partition(lab, root, "h1", args.partition)}
            out = {}
            for name, run in phases.items():
                print(f"bench-fleet: {name}", file=sys.stderr, flush=True)
                out[name] = run()
        finally:
            lab.down()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
