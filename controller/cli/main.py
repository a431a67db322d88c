"""Command line: `warmvm plan|reconcile|watch|get|ssh|exec|logs` (also `python -m controller`).

The outermost shell: parses arguments, loads specs, takes the lock, wires the
drivers, and turns every expected failure into one line on stderr and an exit
code (plan: 0 nothing to do, 2 changes pending, 1 error; reconcile: 0
converged, 1 anything failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from ..base.errors import WarmvmError
from ..base.events import Lifecycle
from ..statedir.layout import Layout
from ..statedir.store import Store
from . import agent, fleet, guest, options

if TYPE_CHECKING:
    from ..base.actions import Action
    from ..base.model import Desired
    from ..engine.converge import Options

# spec validation and the planner cost time to import: only the commands that use them import them,
# so `warmvm ssh` and `warmvm logs` start at once
VIEW_NAMES = ("networks", "pool", "images", "vms", "trash", "daemon")

EXIT_OK, EXIT_ERROR, EXIT_PENDING = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    common = options.common(defaults=False)
    top = argparse.ArgumentParser(prog="warmvm", parents=[options.common(defaults=True)],
                                  description="Declarative reconciler for microVM hosts.")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("plan", parents=[common], help="show what reconcile would change")
    sub.add_parser("reconcile", parents=[common], help="converge the host to the specs")
    get = sub.add_parser("get", parents=[common], help="show state")
    get.add_argument("what", choices=VIEW_NAMES)
    get.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ssh = sub.add_parser("ssh", parents=[common], help="run a command in a VM (or a shell)")
    ssh.add_argument("vm")
    ssh.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command to run")
    watch = sub.add_parser("watch", parents=[common], help="the daemon: reconcile whenever something changes")
    watch.add_argument("--interval", type=float, default=300.0, metavar="SECONDS",
                       help="reconcile at least this often (plus or minus 10%%), events or not (default 300)")
    watch.add_argument("--metrics-addr", metavar="HOST:PORT",
                       help="serve Prometheus metrics there, e.g. 127.0.0.1:9464 (default: off)")
    watch.add_argument("--poll", type=float, help=argparse.SUPPRESS)  # from before spec changes were events
    doctor = sub.add_parser("doctor", parents=[common], help="is this host ready for the specs? (changes nothing)")
    doctor.add_argument("--deep", action="store_true", help="also check each work seed with e2fsck -fn (slower)")
    doctor.add_argument("-o", "--output", choices=("table", "json"), default="table")
    verify = sub.add_parser("verify", parents=[common], help="the leak audit: what warmvm made and no spec explains")
    verify.add_argument("-o", "--output", choices=("table", "json"), default="table")
    sub.add_parser("seed", parents=[common], help="generate the work seeds the specs' images need, nothing else")
    logs = sub.add_parser("logs", parents=[common], help="a VM's serial console")
    logs.add_argument("vm")
    logs.add_argument("-f", "--follow", action="store_true")
    guest.register(sub, common)
    fleet.register(sub, common)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = Lifecycle(args.log_format)
    try:
        return COMMANDS[args.command](args, log)
    except WarmvmError as e:
        print(f"warmvm: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("warmvm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `warmvm logs VM | head`: whoever read the output has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141


def load_specs(args: argparse.Namespace) -> Desired:
    from ..engine.converge import load_specs
    if not args.specs.is_dir():
        raise WarmvmError(f"{args.specs}: spec directory does not exist")
    desired = load_specs(args.specs, options.policy(args))
    for error in desired.errors:
        print(error, file=sys.stderr)
    return desired


def _show_held(held: tuple[Action, ...], holds: tuple[str, ...]) -> None:
    if held:
        print(f"held back: {'; '.join(holds)}", file=sys.stderr)
    for action in held:
        print(f"(held back) {action.describe()}")


def cmd_plan(args: argparse.Namespace, log: Lifecycle) -> int:
    from ..engine.host import open_host
    from ..engine.plan import plan
    desired = load_specs(args)
    current = plan(desired, open_host(Store(args.state), False, args.clone_method).observer(desired)())
    for action in current.actions:
        print(action.describe())
    _show_held(current.held_back, current.holds)
    for problem in current.problems:
        print(f"problem: {problem}", file=sys.stderr)
    log.summary(f"plan: {len(current.actions)} to apply, {len(current.held_back)} held back, "
                f"{len(current.problems)} problems, {len(desired.errors)} spec errors",
                actions=len(current.actions))
    if desired.errors or current.problems:
        return EXIT_ERROR
    return EXIT_PENDING if current.actions else EXIT_OK


def cmd_reconcile(args: argparse.Namespace, log: Lifecycle) -> int:
    from ..engine.converge import converge, report
    done = converge(Store(args.state), reconcile_options(args), log)
    report(done, log)
    return EXIT_OK if done.ok else EXIT_ERROR


def reconcile_options(args: argparse.Namespace) -> Options:
    from ..engine.converge import Options
    if not args.specs.is_dir():
        raise WarmvmError(f"{args.specs}: spec directory does not exist")
    return Options(args.specs, options.policy(args), args.clone_method, args.boot_timeout, args.lock_timeout)


def cmd_watch(args: argparse.Namespace, log: Lifecycle) -> int:
    """The daemon: woken by spec changes, netlink events for our devices, QEMU exits and a periodic
    resync; SIGTERM/SIGINT finish the pass under way and exit 0, SIGHUP reads the specs now."""
    from ..daemon.loop import Settings, run
    return run(Store(args.state), reconcile_options(args), Settings(args.interval, args.metrics_addr), log)


def cmd_get(args: argparse.Namespace, log: Lifecycle) -> int:
    from ..base.model import Desired
    from ..engine.converge import load_specs
    from ..engine.host import open_host
    from . import views
    if args.what == "daemon":  # read from the daemon's own status file, not from the host
        from ..daemon.status import read_status
        return _show([read_status(Layout(Store(args.state).root).daemon_status)], args.output)
    policy = options.policy(args)
    desired = load_specs(args.specs, policy) if args.specs.is_dir() else Desired(policy=policy)
    rows = views.VIEWS[args.what](desired, open_host(Store(args.state), False, args.clone_method).observer(desired)())
    return _show(rows, args.output)


def _show(rows: list[dict[str, object]], output: str) -> int:
    from .views import table
    print(json.dumps(rows, indent=2, default=str) if output == "json" else table(rows))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, log: Lifecycle) -> int:
    from ..audit.doctor import FAIL, Context, doctor, table
    from ..engine.host import open_host
    desired = load_specs(args)
    host = open_host(Store(args.state), False, args.clone_method, trust=False)
    checks = doctor(Context(desired, host.observe(desired), host.layout, args.deep))
    print(json.dumps([c.to_dict() for c in checks], indent=2) if args.output == "json" else table(checks))
    return EXIT_ERROR if any(c.status == FAIL for c in checks) else EXIT_OK


def cmd_verify(args: argparse.Namespace, log: Lifecycle) -> int:
    from ..audit.observe import observe_host
    from ..audit.verify import verify
    from ..engine.host import open_host
    desired = load_specs(args)
    host = open_host(Store(args.state), False, args.clone_method)
    report = verify(desired, host.observe(desired), observe_host(host.layout, host.instance), str(host.layout.vms))
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for c in report.capacity:
            print(f"capacity  network/{c.network}: idle {c.idle} of size {c.size}")
        for f in report.leaks:
            print(f"LEAK      {f.kind} {f.name}: {f.why}")
        for f in report.foreign:
            print(f"not ours  {f.kind} {f.name}: {f.why}")
        print(f"verify: {'clean' if report.clean else 'LEAKS'}: {len(report.leaks)} leaks, "
              f"{len(report.foreign)} not ours")
    return EXIT_OK if report.clean else EXIT_ERROR


def cmd_seed(args: argparse.Namespace, log: Lifecycle) -> int:
    """The seed step of reconcile alone, through the same code and fingerprint: what an image build
    runs so that the very first VM of a fresh host already clones a seed."""
    from ..disks.actions import SeedGenerate
    from ..engine.host import open_host
    from ..engine.plan import plan
    store = Store(args.state)
    with store.lock(args.lock_timeout):
        desired = load_specs(args)
        host = open_host(store, True, args.clone_method)
        drivers = host.drivers(log.progress if sys.stderr.isatty() else None)
        failed = 0
        try:
            for action in plan(desired, host.observe(desired)).actions:
                if isinstance(action, SeedGenerate):
                    start = time.perf_counter()
                    try:
                        details = drivers.apply(action)
                    except WarmvmError as e:
                        failed += 1
                        log.event(action.kind, action.subject, "failed", (time.perf_counter() - start) * 1000,
                                  error=str(e))
                        continue
                    log.event(action.kind, action.subject, "ok", (time.perf_counter() - start) * 1000, **details)
        finally:
            drivers.close()
    return EXIT_ERROR if failed or desired.errors else EXIT_OK


def cmd_ssh(args: argparse.Namespace, log: Lifecycle) -> int:
    from ..adapters.ssh import host_alias, ssh_argv
    from ..vms.observe import read_record
    layout = Layout(Store(args.state).root)
    record = read_record(layout.vm(args.vm).record)
    if record is None:
        raise WarmvmError(f"vm/{args.vm}: no such VM in {args.state}")
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    files = layout.vm(args.vm)
    argv = ssh_argv(layout.ssh_key, record.ip, command, (files.known_hosts, host_alias(args.vm)))
    if sys.stdin.isatty() and not command:
        argv.insert(1, "-t")
    os.execvp(argv[0], argv)


def cmd_logs(args: argparse.Namespace, log: Lifecycle) -> int:
    console = Layout(Store(args.state).root).vm(args.vm).console
    if not console.exists():
        raise WarmvmError(f"vm/{args.vm}: no console log in {console.parent}")
    from ..adapters.qemu.console import follow  # here: the other commands need none of QEMU's modules
    for chunk in follow(console, args.follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return EXIT_OK


COMMANDS = {"plan": cmd_plan, "reconcile": cmd_reconcile, "watch": cmd_watch, "get": cmd_get, "ssh": cmd_ssh,
            "logs": cmd_logs, "doctor": cmd_doctor, "verify": cmd_verify, "seed": cmd_seed,
            "agent": agent.cmd_agent, "fleet": fleet.cmd_fleet, "exec": guest.cmd_exec}
