"""`warmvm agent`: fleet mode's daemon on one host. The daemon of `watch`, its specs the host's share
of the fleet (written by the agent into the state directory), its statuses written back."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys

from ..base.errors import WarmvmError
from ..base.events import Lifecycle
from ..statedir.layout import Layout
from ..statedir.store import Store
from .fleet import connect
from .options import policy


def cmd_agent(args: argparse.Namespace, log: Lifecycle) -> int:
    from prometheus_client import CollectorRegistry

    from ..daemon.loop import Settings, run
    from ..engine.converge import Options
    from ..fleet.agent import Agent, AgentConfig, HostHeld
    from ..fleet.state import HostInfo
    store = Store(args.state)
    store.ensure()
    layout = Layout(store.root)
    instance = store.instance(create=True)
    assert instance is not None
    vcpus, memory = capacity(args.capacity)
    info = HostInfo(labels=pairs(args.labels, "--labels"), vcpus=vcpus, memory=memory,
                    reach=args.reach or default_reach(), state=str(store.root), command=warmvm_command())
    config = AgentConfig(args.host, info, instance, args.lease_ttl, not args.no_place)
    layout.fleet_specs.mkdir(mode=0o700, parents=True, exist_ok=True)
    options = Options(layout.fleet_specs, policy(args), args.clone_method, args.boot_timeout, args.lock_timeout)
    registry = CollectorRegistry()
    agent = Agent(lambda: connect(args), config, layout, registry)
    with store.held(layout.agent_lock, "an agent"):
        try:
            agent.claim()
        except HostHeld:
            raise
        except WarmvmError as e:
            print(f"warmvm agent: {e}; running on the share on disk until the store answers", file=sys.stderr)
        try:
            return run(store, options, Settings(args.interval, args.metrics_addr), log, agent=agent,
                       registry=registry)
        finally:
            agent.close()


def capacity(text: str) -> tuple[int, int]:
    """--capacity, or what the host has less a reserve for itself (a vCPU, and 1 GiB or a tenth)."""
    from ..specs.schema import parse_quantity
    given = pairs(text, "--capacity")
    unknown = set(given) - {"vcpus", "memory"}
    if unknown:
        raise WarmvmError(f"--capacity: unknown {', '.join(sorted(unknown))} (vcpus=N,memory=SIZE)")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        vcpus = int(given["vcpus"]) if "vcpus" in given else max(1, (os.cpu_count() or 1) - 1)
        memory = parse_quantity(given["memory"]) if "memory" in given else total - max(1 << 30, total // 10)
    except ValueError as e:
        raise WarmvmError(f"--capacity: {e}") from None
    return vcpus, memory


def pairs(text: str, option: str) -> dict[str, str]:
    from ..specs.schema import labels
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise WarmvmError(f"{option}: {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    try:
        return labels(out)
    except ValueError as e:
        raise WarmvmError(f"{option}: {e}") from None


def default_reach() -> str:
    done = subprocess.run(["ip", "netns", "identify", str(os.getpid())], capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL)
    name = done.stdout.strip()
    return f"netns:{name}" if done.returncode == 0 and name else f"ssh:root@{socket.gethostname()}"


def warmvm_command() -> list[str]:
    script = shutil.which("warmvm")
    return [script] if script else [sys.executable, "-m", "controller"]


