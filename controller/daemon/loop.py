"""The daemon's loop: wait for a wake-up, run one reconcile, tell what happened, repeat.

Level-triggered: a wake-up only says "look again"; the pass observes and
plans from scratch. Boot waits run beside the passes (core.reconcile's
Background), so one slow guest never holds the pool refill, a seed or
another VM. SIGTERM or SIGINT: the pass under way finishes, then it exits
0; SIGHUP: the specs are read again now. A bad spec, a failed action or the
lock held by a one-shot reconcile is reported, and the daemon carries on.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..base.errors import WarmvmError
from ..base.events import Lifecycle
from ..engine.converge import Converged, Options, converge, report
from ..engine.reconcile import Background
from ..engine.retries import Retries
from ..engine.state import Observed
from ..network.marks import bridge_mark
from ..statedir.layout import Layout
from ..statedir.store import Store
from .metrics import Metrics
from .status import DaemonStatus, this_process
from .wake import ExitWatcher, LinkWatcher, Seen, Wakeups, start, watch_specs

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..fleet.agent import Agent

JITTER = 0.1  # the resync interval varies by this much either way, so that many hosts never beat together
ERROR_PAUSE = 1.0  # after a pass that raised: no tight loop on a persistent error


@dataclass(frozen=True)
class Settings:
    resync: float  # seconds between passes with no event (the safety net)
    metrics_addr: str | None


def run(store: Store, options: Options, settings: Settings, log: Lifecycle, agent: Agent | None = None,
        registry: CollectorRegistry | None = None) -> int:
    """`agent`: fleet mode, where the specs are the host's share that the agent writes (and wakes the
    daemon for), and each pass's statuses go back to the store."""
    wake, stop = Wakeups(), threading.Event()
    layout = Layout(store.root)
    _signals(wake, stop)
    metrics = Metrics(registry)
    log.listeners.append(metrics.event)
    if settings.metrics_addr:
        metrics.serve(settings.metrics_addr)
    instance: list[str | None] = [store.instance(create=False) if store.root.is_dir() else None]
    links, exits = LinkWatcher(wake, lambda: instance[0]), ExitWatcher(wake)
    if agent is None:
        start(lambda s: watch_specs(options.specs, wake, s), stop, "warmvm-specs")
    else:
        agent.start(wake.post, stop)
    start(links.run, stop, "warmvm-netlink")
    start(exits.run, stop, "warmvm-pidfd")
    background = Background(lambda action: wake.post("vm-ready"))
    retries = Retries(layout.retries, layout.tmp)  # kept across passes: a failure for good waits its turn
    status = this_process()
    wake.post("start")
    due = time.monotonic() + _jittered(settings.resync)
    retry = float("inf")  # when a back-off or a failed action's wait ends (monotonic)
    while not stop.is_set():
        reasons = wake.wait(max(0.0, min(due, retry) - time.monotonic()))
        if stop.is_set():
            break
        if not reasons:
            reasons = {"retry"} if time.monotonic() >= retry and time.monotonic() < due else {"resync"}
        if "resync" in reasons or time.monotonic() >= due:
            due = time.monotonic() + _jittered(settings.resync)
        metrics.woke(reasons)
        now = options if agent is None else replace(options, policy=agent.policy(options.policy))
        done = _pass(store, now, log, background, metrics, status, sorted(reasons), layout, links, exits, retries)
        wake_at = done.result.wake_at if done is not None else None
        retry = float("inf") if wake_at is None else time.monotonic() + max(0.0, wake_at - time.time())
        if agent is not None and done is not None:
            agent.passed(done.desired, done.result.last_observed)
        instance[0] = store.instance(create=False)
    stop.set()
    return 0


def _pass(store: Store, options: Options, log: Lifecycle, background: Background, metrics: Metrics,
          status: DaemonStatus, reasons: list[str], layout: Layout, links: LinkWatcher,
          exits: ExitWatcher, retries: Retries) -> Converged | None:
    started = time.perf_counter()
    done: Converged | None = None
    status.woken_by, status.last_error = reasons, None
    links.busy.set()
    try:
        done = converge(store, options, log, background, retries)
        report(done, log)
        observed = done.result.last_observed
        metrics.passed(time.perf_counter() - started, done.desired, observed)
        status.converged = done.ok
        if observed is not None:
            links.track((n.pool_prefix for n in done.desired.networks.values()),
                        (n.bridge for n in done.desired.networks.values()), _as_left(observed))
            exits.track(s.record.pid for s in observed.vms.values() if s.alive and s.record.pid)
    except WarmvmError as e:  # the lock held by a one-shot reconcile, an unreadable state: next time
        status.last_error = str(e)
        print(f"warmvm: {e}", file=sys.stderr)
        time.sleep(ERROR_PAUSE)
    except Exception as e:  # a bug must not stop the daemon: say where, carry on
        status.last_error = f"{type(e).__name__}: {e}"
        print(f"warmvm: internal error (the daemon carries on): {status.last_error}\n"
              f"{''.join(traceback.format_exception(e)[-3:])}", file=sys.stderr, end="")
        time.sleep(ERROR_PAUSE)
    finally:
        links.busy.clear()
        links.settle()
    status.passes += 1
    status.last_pass, status.last_ms = time.time(), (time.perf_counter() - started) * 1000
    if store.root.is_dir():
        try:
            status.save(layout.daemon_status, layout.tmp)
        except OSError as e:
            print(f"warmvm: cannot write {layout.daemon_status}: {e.strerror}", file=sys.stderr)
    return done


def _as_left(observed: Observed) -> dict[str, Seen]:
    """This instance's devices as the pass left them, so that their echoes wake nothing."""
    seen: dict[str, Seen] = {t.name: (str(t.mark), t.master, t.up) for t in observed.net.taps}
    for bridge in observed.net.bridges.values():
        if bridge.owner is not None:
            seen[bridge.name] = (str(bridge_mark(observed.net.instance, bridge.owner)), None, bridge.up)
    return seen


def _signals(wake: Wakeups, stop: threading.Event) -> None:
    def stopping(signum: int, _frame: object) -> None:
        stop.set()
        wake.post("signal")

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGHUP, lambda signum, _frame: wake.post("sighup"))


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)

