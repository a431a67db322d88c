"""A fleet on this one machine: a real etcd (hack/fleet-up.sh --netns, each member in a network
namespace of its own on a hub bridge), hosts as namespaces on the hub, each with its own state
directory and a real `warmvm agent`. Everything is removed after the test, pass or fail: agents by
pid, their QEMUs, the members (hack/fleet-down.sh), the namespaces and their devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .cli import REPO
from .netns import kill_qemu_under
from .waits import wait_for

T = TypeVar("T")
TTL = 3  # the agents' presence lease in tests (the default is 15 s)


@dataclass
class Agent:
    host: str
    netns: str
    state: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class FleetLab:
    root: Path
    prefix: str
    endpoints: str = ""
    agents: dict[str, Agent] = field(default_factory=dict)

    @property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "etcd" / "cluster.json").read_text())
        return data

    cli = [sys.executable, "-m", "controller"]

    def warmvm(self, *args: str, netns: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The CLI, run in the hub's namespace (an operator's seat) or a host's."""
        cmd = ["ip", "netns", "exec", netns or f"{self.prefix}-hub", *self.cli, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              stdin=subprocess.DEVNULL, env={**os.environ, "WARMVM_STORE": self.endpoints})

    def fleet(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = self.warmvm("fleet", *args)
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def vms(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in json.loads(self.fleet("get", "vms", "-o", "json").stdout)}

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in json.loads(self.fleet("get", "hosts", "-o", "json").stdout)}

    def add_host(self, name: str) -> Agent:
        done = subprocess.run([sys.executable, str(REPO / "hack" / "fleet.py"), "host", name, "--dir",
                               str(self.root / "etcd")], capture_output=True, text=True, check=True)
        state = self.root / f"state-{name}"
        agent = Agent(name, done.stdout.strip(), state, self.root / f"agent-{name}.log")
        self.agents[name] = agent
        return agent

    def start(self, agent: Agent, *extra: str) -> Agent:
        """`warmvm agent` for the host, in its namespace, on its state directory."""
        cmd = ["ip", "netns", "exec", agent.netns, sys.executable, "-m", "controller", "--state", str(agent.state),
               "--log-format", "json", "agent", "--host", agent.host, "--lease-ttl", str(TTL), *extra]
        log = open(agent.log, "ab")  # noqa: SIM115  (the child keeps it)
        agent.process = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO,
                                         env={**os.environ, "WARMVM_STORE": self.endpoints})
        log.close()
        self.until(lambda: self.hosts().get(agent.host, {}).get("state", "").startswith("Ready"),
                   f"agent {agent.host} holds its host")
        return agent

    def until(self, predicate: Callable[[], T], what: str, timeout: float = 60) -> T:
        """wait_for at the pace of CLI calls."""
        return wait_for(predicate, timeout=timeout, interval=0.25, what=what)

    def etcdctl(self, *args: str) -> str:
        done = subprocess.run(["ip", "netns", "exec", f"{self.prefix}-hub", "etcdctl", "--endpoints", self.endpoints,
                               *args], capture_output=True, text=True, check=True)
        return done.stdout

    def store_dump(self) -> dict[str, str]:
        """Every key under /warmvm/ and its value, read with etcd's own client."""
        lines = self.etcdctl("get", "--prefix", "/warmvm/").splitlines()
        return dict(zip(lines[0::2], lines[1::2], strict=True))

    def metric(self, agent: Agent, name: str) -> float | None:
        """A metric of an agent started with --metrics-addr 127.0.0.1:9464 (None: it does not answer)."""
        code = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9464/metrics', timeout=2).read().decode())"
        done = subprocess.run(["ip", "netns", "exec", agent.netns, sys.executable, "-c", code], capture_output=True,
                              text=True)
        values = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith(name + " ")]
        return values[0] if values else None

    def member_pid(self, name: str) -> int:
        return int(next(m["pid"] for m in self.manifest["members"] if m["name"] == name))

    def leader(self) -> str:
        """The member that leads now (etcdctl, from the hub)."""
        done = subprocess.run(["ip", "netns", "exec", f"{self.prefix}-hub", "etcdctl", "--endpoints",
                               self.endpoints, "endpoint", "status", "-w", "json"], capture_output=True,
                              text=True, check=True)
        status = json.loads(done.stdout)
        leader = next(s["Endpoint"] for s in status if s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        return str(next(m["name"] for m in self.manifest["members"] if m["client"] == leader))


def when(value: T, test: Callable[[T], bool]) -> T | None:
    """`value` if it passes `test`: what a wait returns once the state it reads is the one wanted."""
    return value if test(value) else None


@contextmanager
def fleet_lab(root: Path, members: int = 3) -> Iterator[FleetLab]:
    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root for network namespaces")
    lab = FleetLab(root, f"wf{uuid.uuid4().hex[:6]}")
    etcd = root / "etcd"
    try:
        done = subprocess.run(["bash", str(REPO / "hack" / "fleet-up.sh"), str(members), "--netns", lab.prefix,
                               "--dir", str(etcd)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        lab.endpoints = done.stdout.strip().splitlines()[-1]
        yield lab
    finally:
        for agent in lab.agents.values():
            agent.stop()
        kill_qemu_under(root)
        subprocess.run(["bash", str(REPO / "hack" / "fleet-down.sh"), "--dir", str(etcd)], capture_output=True)
