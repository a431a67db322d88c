"""Command line of fleet mode: `warmvm agent` (a host's daemon, fed by the store) and `warmvm fleet
apply|get|delete|place|ssh|logs` (the operator's side). Every command takes --store (or
$WARMVM_STORE) and etcd's client TLS files."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ..base.errors import WarmvmError
from ..base.events import Lifecycle

EXIT_OK, EXIT_ERROR = 0, 1


def store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=os.environ.get("WARMVM_STORE"), metavar="URL[,URL...]",
                        help="etcd's client endpoints (default $WARMVM_STORE)")
    parser.add_argument("--store-ca", metavar="FILE", help="CA of etcd's client TLS")
    parser.add_argument("--store-cert", metavar="FILE", help="this client's certificate")
    parser.add_argument("--store-key", metavar="FILE", help="this client's key")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    agent = sub.add_parser("agent", parents=[common], help="fleet mode: this host's daemon, its specs from the store")
    store_options(agent)
    agent.add_argument("--host", required=True, help="this host's name in the fleet")
    agent.add_argument("--labels", default="", metavar="K=V,...", help="this host's labels (hostSelector)")
    agent.add_argument("--capacity", default="", metavar="vcpus=N,memory=SIZE",
                       help="what VMs may reserve here (default: the host's CPUs and memory, less a reserve)")
    agent.add_argument("--reach", help="how `fleet ssh` gets here: netns:NAME, ssh:USER@ADDR or local "
                                       "(default: this network namespace's name, else ssh:root@HOSTNAME)")
    agent.add_argument("--lease-ttl", type=int, default=15, metavar="SECONDS", help="the presence lease (default 15)")
    agent.add_argument("--no-place", action="store_true", help="place no VMs (other agents do)")
    agent.add_argument("--interval", type=float, default=300.0, metavar="SECONDS")
    agent.add_argument("--metrics-addr", metavar="HOST:PORT")
    fleet = sub.add_parser("fleet", help="fleet mode: the operator's commands").add_subparsers(dest="fleet",
                                                                                             required=True)
    apply = fleet.add_parser("apply", help="write specs to the store, checked as local specs are")
    apply.add_argument("-f", "--filename", type=Path, required=True, metavar="FILE|DIR")
    apply.add_argument("--prune", action="store_true", help="remove the store's specs the files do not name")
    get = fleet.add_parser("get", help="the fleet's VMs or hosts")
    get.add_argument("what", choices=("vms", "hosts"))
    get.add_argument("-o", "--output", choices=("table", "json"), default="table")
    delete = fleet.add_parser("delete", help="remove a VM from the fleet (its host moves it to its trash)")
    delete.add_argument("kind", choices=("vm",))
    delete.add_argument("name")
    fleet.add_parser("place", help="place pending VMs now (every agent does, too)")
    for verb, what in (("cordon", "no new VMs are placed on HOST"), ("uncordon", "HOST takes new VMs again"),
                       ("drain", "cordon HOST, then place its recreate VMs elsewhere, one by one")):
        fleet.add_parser(verb, help=what).add_argument("host")
    evict = fleet.add_parser("evict", help="place a VM anew on another host, on purpose (its disk stays behind)")
    evict.add_argument("vm")
    evict.add_argument("--force", action="store_true", help="yes: a new VM from its image's seed, elsewhere")
    fleet.add_parser("verify", help="the fleet's invariants; exit 1 and the offenders named if one is broken")
    ssh = fleet.add_parser("ssh", help="a command in a VM (or a shell), through the host it runs on")
    ssh.add_argument("vm")
    ssh.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    logs = fleet.add_parser("logs", help="a VM's serial console, through the host it runs on")
    logs.add_argument("vm")
    logs.add_argument("-f", "--follow", action="store_true")
    for parser in fleet.choices.values():
        store_options(parser)
        parser.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS)


def connect(args: argparse.Namespace) -> Any:
    from ..adapters.etcd import Etcd, Tls
    if not args.store:
        raise WarmvmError("--store: no endpoint given (or set $WARMVM_STORE)")
    return Etcd([u.strip() for u in args.store.split(",") if u.strip()],
                Tls(args.store_ca, args.store_cert, args.store_key))


def cmd_fleet(args: argparse.Namespace, log: Lifecycle) -> int:
    from . import fleet_ops
    handler = {"apply": _apply, "get": _get, "delete": _delete, "place": _place, "ssh": _ssh, "logs": _logs,
               "cordon": fleet_ops.cordon, "uncordon": fleet_ops.cordon, "drain": fleet_ops.drain,
               "evict": fleet_ops.evict, "verify": fleet_ops.verify}
    return handler[args.fleet](args, connect(args))


def _apply(args: argparse.Namespace, etcd: Any) -> int:
    from ..fleet.driver import apply_specs
    from ..fleet.observe import read_fleet
    from ..fleet.specs import documents
    fleet = read_fleet(etcd)
    stored = [] if args.prune else [(k, n, s.document) for (k, n), s in fleet.specs.items()]
    docs, errors = documents(args.filename, stored)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        print(f"fleet apply: nothing written: {len(errors)} spec errors", file=sys.stderr)
        return EXIT_ERROR
    lines = apply_specs(etcd, fleet, docs, args.prune)
    for line in lines:
        print(line)
    print(f"fleet apply: {len(lines)} changed, {len(docs)} specs", file=sys.stderr)
    return EXIT_OK


def _get(args: argparse.Namespace, etcd: Any) -> int:
    from ..fleet.observe import read_fleet
    from . import fleet_views
    from .views import table
    fleet = read_fleet(etcd)
    for problem in fleet.problems:
        print(f"warmvm: {problem}", file=sys.stderr)
    rows = (fleet_views.vms if args.what == "vms" else fleet_views.hosts)(fleet, time.time())
    print(json.dumps(rows, indent=2) if args.output == "json" else table(rows))
    return EXIT_OK


def _delete(args: argparse.Namespace, etcd: Any) -> int:
    from ..fleet.driver import delete_vm
    if not delete_vm(etcd, args.name):
        raise WarmvmError(f"vm/{args.name}: no such VM in the fleet")
    print(f"vm/{args.name} deleted (its host moves it to its trash)")
    return EXIT_OK


def _place(args: argparse.Namespace, etcd: Any) -> int:
    from ..fleet.driver import place_pending
    done = place_pending(etcd)
    print(f"placed {done.placed}, pending {done.pending}, conflicts {done.conflicts}")
    return EXIT_OK


def _ssh(args: argparse.Namespace, etcd: Any) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    argv = _through_host(etcd, args.vm, ["ssh", args.vm, "--", *command], interactive=not command)
    os.execvp(argv[0], argv)


def _logs(args: argparse.Namespace, etcd: Any) -> int:
    argv = _through_host(etcd, args.vm, ["logs", args.vm, *(["-f"] if args.follow else [])], interactive=False)
    os.execvp(argv[0], argv)


def _through_host(etcd: Any, vm: str, command: list[str], interactive: bool) -> list[str]:
    """How to run `warmvm COMMAND` on the host `vm` runs on, or why it cannot be reached."""
    from ..fleet.observe import read_fleet
    fleet = read_fleet(etcd)
    placed = fleet.placements.get(vm)
    if placed is None:
        raise WarmvmError(f"vm/{vm}: " + ("not placed on any host yet" if ("VM", vm) in fleet.specs
                                           else "no such VM in the fleet"))
    host, info = placed.value.host, fleet.hosts.get(placed.value.host)
    if info is None or host not in fleet.alive:
        raise WarmvmError(f"vm/{vm}: its host {host} is Lost (no live agent holds it): it cannot be reached")
    remote = [*info.command, "--state", info.state, *command]
    how, _, where = info.reach.partition(":")
    if how == "netns":
        return ["ip", "netns", "exec", where, *remote]
    if how == "ssh":
        return ["ssh", *(["-t"] if interactive and sys.stdin.isatty() else []), where, shlex.join(remote)]
    if how == "local":
        return remote
    raise WarmvmError(f"vm/{vm}: its host {host} says it is reached by {info.reach!r}, which warmvm does not know")


COMMANDS = {"fleet": cmd_fleet}
