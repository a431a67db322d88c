#!/usr/bin/env python3
"""A development etcd for warmvm's fleet mode: `up` starts N members, `host` adds a simulated host,
`down` removes all of it. Run through hack/fleet-up.sh and hack/fleet-down.sh.

Two shapes:
- loopback (default): members on 127.0.0.1, client ports 23791.., peer ports 23801..;
- --netns PREFIX: a hub namespace PREFIX-hub holding a bridge, and each member in a namespace of
  its own (PREFIX-e1, ...) on a veth into the hub, 10.213.0.11.. on port 2379. `host NAME` adds
  namespace PREFIX-NAME on the hub too (10.213.0.101..), for an agent: one machine, many hosts.

Data lives on tmpfs (/dev/shm: etcd 3.4 has no --unsafe-no-fsync); what was made is written to
DIR/cluster.json (members, pids, namespaces), which `down` reads: it kills only the etcd processes
it started (by pid, checked against their command line) and deletes only the namespaces it made.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HUB_NET = "10.213.0"  # addresses inside the namespaces made here, never on the host's own network
BRIDGE = "wvfleet0"


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL)


def manifest_path(directory: Path) -> Path:
    return directory / "cluster.json"


def load(directory: Path) -> dict[str, object]:
    path = manifest_path(directory)
    return json.loads(path.read_text()) if path.exists() else {}


def save(directory: Path, manifest: dict[str, object]) -> None:
    tmp = manifest_path(directory).with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path(directory))


def veth_into_hub(prefix: str, ns: str, short: str, address: str) -> None:
    """A namespace `ns` with a veth whose peer is a port of the hub's bridge."""
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    outer = f"vf{short}"
    sh("ip", "link", "add", outer, "netns", f"{prefix}-hub", "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", f"{prefix}-hub", "link", "set", outer, "master", BRIDGE, "up")
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")


def up(args: argparse.Namespace) -> None:
    directory: Path = args.dir
    if load(directory).get("members"):
        sys.exit(f"fleet-up: {directory} holds a cluster already (hack/fleet-down.sh --dir {directory} first)")
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    data = Path("/dev/shm") / f"warmvm-fleet-{token}"
    manifest: dict[str, object] = {"token": token, "data": str(data), "netns": args.netns, "members": [],
                                   "hosts": {}, "namespaces": []}
    save(directory, manifest)  # from here on, `down` can undo whatever was made
    namespaces: list[str] = manifest["namespaces"]  # type: ignore[assignment]
    if args.netns:
        hub = f"{args.netns}-hub"
        sh("ip", "netns", "add", hub)
        namespaces.append(hub)
        sh("ip", "-n", hub, "link", "set", "lo", "up")
        sh("ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", hub, "addr", "add", f"{HUB_NET}.1/24", "dev", BRIDGE)
        sh("ip", "-n", hub, "link", "set", BRIDGE, "up")
        save(directory, manifest)
    members = []
    for i in range(1, args.members + 1):
        if args.netns:
            ns, ip = f"{args.netns}-e{i}", f"{HUB_NET}.{10 + i}"
            veth_into_hub(args.netns, ns, f"{token[:4]}e{i}", ip)
            namespaces.append(ns)
            client, peer = f"http://{ip}:2379", f"http://{ip}:2380"
        else:
            ns, client, peer = None, f"http://127.0.0.1:{23790 + i}", f"http://127.0.0.1:{23800 + i}"
        members.append({"name": f"m{i}", "netns": ns, "client": client, "peer": peer})
        save(directory, manifest)
    cluster = ",".join(f"{m['name']}={m['peer']}" for m in members)
    for m in members:
        m["pid"] = start_member(m, cluster, token, data, directory)
        manifest["members"] = members
        save(directory, manifest)
    endpoints = ",".join(str(m["client"]) for m in members)
    wait_healthy(members, args.netns, args.timeout)
    print(endpoints)


def start_member(m: dict[str, object], cluster: str, token: str, data: Path, directory: Path,
                 state: str = "new") -> int:
    name = str(m["name"])
    (data / name).mkdir(parents=True, exist_ok=True)
    argv = ["etcd", "--name", name, "--data-dir", str(data / name),
            "--listen-client-urls", str(m["client"]), "--advertise-client-urls", str(m["client"]),
            "--listen-peer-urls", str(m["peer"]), "--initial-advertise-peer-urls", str(m["peer"]),
            "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", token,
            "--heartbeat-interval", "100", "--election-timeout", "1000", "--logger", "zap",
            "--log-outputs", str(directory / f"{name}.log")]
    if m["netns"]:
        argv = ["ip", "netns", "exec", str(m["netns"]), *argv]  # ip execs etcd: the pid is etcd's
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc.pid


def wait_healthy(members: list[dict[str, object]], prefix: str | None, timeout: float) -> None:
    endpoints = ",".join(str(m["client"]) for m in members)
    deadline = time.monotonic() + timeout
    while True:
        done = sh("etcdctl", "--endpoints", endpoints, "--dial-timeout", "1s", "endpoint", "health",
                  ns=f"{prefix}-hub" if prefix else None, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            sys.exit(f"fleet-up: the members did not become healthy in {timeout:g}s: {done.stderr.strip()}")
        time.sleep(0.2)


def host(args: argparse.Namespace) -> None:
    manifest = load(args.dir)
    prefix = manifest.get("netns")
    if not prefix:
        sys.exit("fleet-up: `host` needs a cluster started with --netns")
    hosts: dict[str, str] = manifest["hosts"]  # type: ignore[assignment]
    if args.name in hosts:
        sys.exit(f"fleet-up: host {args.name} exists already")
    ns, ip = f"{prefix}-{args.name}", f"{HUB_NET}.{101 + len(hosts)}"
    namespaces: list[str] = manifest["namespaces"]  # type: ignore[assignment]
    namespaces.append(ns)
    hosts[args.name] = ns
    save(args.dir, manifest)
    veth_into_hub(str(prefix), ns, f"{str(manifest['token'])[:4]}h{len(hosts)}", ip)
    print(ns)


def restart(args: argparse.Namespace) -> None:
    """A member killed (a chaos test's kill -9) started again on its own data."""
    manifest = load(args.dir)
    members: list[dict[str, object]] = manifest["members"]  # type: ignore[assignment]
    cluster = ",".join(f"{m['name']}={m['peer']}" for m in members)
    for m in members:
        if m["name"] == args.name:
            if is_our_etcd(int(m["pid"]), str(manifest["data"])):  # type: ignore[call-overload]
                sys.exit(f"fleet: member {args.name} runs already")
            m["pid"] = start_member(m, cluster, str(manifest["token"]), Path(str(manifest["data"])), args.dir,
                                    "existing")
            save(args.dir, manifest)
            return
    sys.exit(f"fleet: no member {args.name}")


def is_our_etcd(pid: int, data: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and os.path.basename(argv[0]) == b"etcd" and any(a.startswith(data.encode()) for a in argv)


def down(args: argparse.Namespace) -> None:
    manifest = load(args.dir)
    if not manifest:
        return
    data = str(manifest.get("data", ""))
    for m in manifest.get("members", []):  # type: ignore[attr-defined]
        pid = int(m.get("pid") or 0)
        if pid and data and is_our_etcd(pid, data):
            os.kill(pid, signal.SIGKILL)
    for ns in reversed(manifest.get("namespaces", [])):  # type: ignore[call-overload]
        sh("ip", "netns", "delete", ns, check=False)
    if data.startswith("/dev/shm/warmvm-fleet-"):
        shutil.rmtree(data, ignore_errors=True)
    manifest_path(args.dir).unlink(missing_ok=True)
    for log in args.dir.glob("m*.log"):
        log.unlink()


def main() -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent.parent / "state" / "fleet-etcd",
                        help="where the cluster's manifest and logs go (default: state/fleet-etcd)")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", parents=[common], help="start the members; prints the endpoints")
    p.add_argument("members", type=int, nargs="?", default=3)
    p.add_argument("--netns", metavar="PREFIX", help="each member in a namespace of its own, on a hub")
    p.add_argument("--timeout", type=float, default=20.0)
    p = sub.add_parser("host", parents=[common], help="a namespace on the hub for one more simulated host")
    p.add_argument("name")
    p = sub.add_parser("restart", parents=[common], help="start a member that was killed again, on its data")
    p.add_argument("name")
    sub.add_parser("down", parents=[common], help="stop the members, delete the namespaces and the data")
    args = ap.parse_args()
    {"up": up, "host": host, "restart": restart, "down": down}[args.command](args)


if __name__ == "__main__":
    main()
