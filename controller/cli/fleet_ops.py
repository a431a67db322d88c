"""`warmvm fleet cordon|uncordon|drain|evict|verify`: the operator's hands on hosts and placements."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..base.errors import WarmvmError

EXIT_OK, EXIT_ERROR = 0, 1
DRAIN_WAIT = 180.0  # seconds a drained VM may take to be reported by its new host


def cordon(args: argparse.Namespace, etcd: Any) -> int:
    from ..fleet.driver import cordon as set_cordon
    _known(etcd, args.host)
    set_cordon(etcd, args.host, args.fleet == "cordon")
    print(f"host/{args.host} {'cordoned: no new VMs' if args.fleet == 'cordon' else 'uncordoned'}")
    return EXIT_OK


def drain(args: argparse.Namespace, etcd: Any) -> int:
    """Cordon, then each `recreate` VM placed anew elsewhere, one by one (the next once its new host
    reports it); `wait` VMs are listed, never moved."""
    from ..fleet.driver import cordon as set_cordon
    from ..fleet.driver import move
    from ..fleet.observe import read_fleet
    _known(etcd, args.host)
    set_cordon(etcd, args.host, True)
    fleet = read_fleet(etcd)
    mine = sorted(vm for vm, p in fleet.placements.items() if p.value.host == args.host)
    waiting = [vm for vm in mine if not fleet.specs.get(("VM", vm), None) or not fleet.specs[("VM", vm)].recreate]
    for vm in (vm for vm in mine if vm not in waiting):
        host = move(etcd, read_fleet(etcd), vm)
        print(f"vm/{vm}: placed anew on {host}", flush=True)
        _reported(etcd, vm, host)
    for vm in waiting:
        print(f"vm/{vm}: onHostLoss: wait: left on {args.host} (`warmvm fleet evict {vm} --force` moves it, "
              "without its disk)")
    print(f"host/{args.host} drained: cordoned, {len(mine) - len(waiting)} moved, {len(waiting)} left")
    return EXIT_OK


def evict(args: argparse.Namespace, etcd: Any) -> int:
    from ..fleet.driver import move
    from ..fleet.observe import read_fleet
    if not args.force:
        raise WarmvmError(f"vm/{args.vm}: evicting makes it a new VM elsewhere, without its disk: say --force")
    fleet = read_fleet(etcd)
    placed = fleet.placements.get(args.vm)
    if placed is None:
        raise WarmvmError(f"vm/{args.vm}: not placed on any host")
    host = move(etcd, fleet, args.vm)
    print(f"vm/{args.vm}: placed anew on {host} (epoch {placed.value.epoch + 1}); its disk stays behind on "
          f"{placed.value.host}, in its trash once that host sees the move")
    return EXIT_OK


def verify(args: argparse.Namespace, etcd: Any) -> int:
    from ..fleet.observe import read_fleet
    from ..fleet.plan import audit
    fleet = read_fleet(etcd)
    found = audit(fleet)
    for line in found:
        print(f"BROKEN    {line}")
    for problem in fleet.problems:
        print(f"skipped   {problem}")
    print(f"fleet verify: {'clean' if not found else 'BROKEN'}: {len(fleet.placements)} placements on "
          f"{len(fleet.hosts)} hosts, {len(found)} broken")
    return EXIT_OK if not found else EXIT_ERROR


def _known(etcd: Any, host: str) -> None:
    from ..fleet.observe import read_fleet
    if host not in read_fleet(etcd).hosts:
        raise WarmvmError(f"host/{host}: no such host in the fleet")


def _reported(etcd: Any, vm: str, host: str) -> None:
    from ..fleet.observe import read_fleet
    deadline = time.monotonic() + DRAIN_WAIT
    while time.monotonic() < deadline:
        fleet = read_fleet(etcd)
        status, placed = fleet.statuses.get((host, vm)), fleet.placements.get(vm)
        if status and placed and status.epoch >= placed.value.epoch and status.phase not in ("Pending", "Provisioning"):
            return
        time.sleep(0.5)
    print(f"vm/{vm}: not reported by {host} within {DRAIN_WAIT:g}s; going on", file=sys.stderr)
