"""The reconcile loop: observe, plan, apply a pass, observe again, until empty.

Level-triggered like controller-runtime's Reconcile: every pass starts from a
fresh observation, never from what the previous pass believed it did. Each
applied action ends in one outcome: done, retry (a TemporaryError: planned
again on the next pass, after `backoff` of its attempts, capped), or failed
(a PermanentError: not retried within the run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..base.actions import Action
from ..base.errors import MAX_DELAY, PermanentError, TemporaryError, backoff
from ..base.events import Lifecycle
from ..base.kinds import Outcome
from ..base.model import Desired
from .apply import Drivers
from .plan import Plan, plan
from .retries import Retries
from .state import Observed

MAX_PASSES = 12
MAX_PARALLEL = 32


@dataclass
class Result:
    passes: int = 0
    applied: int = 0
    failures: dict[Action, str] = field(default_factory=dict)
    attempts: dict[Action, int] = field(default_factory=dict)  # temporary failures so far, for the backoff
    outcomes: dict[Action, Outcome] = field(default_factory=dict)  # each action's last outcome
    last_plan: Plan | None = None
    observe_ms: float = 0.0  # over all passes: where time goes outside the actions
    plan_ms: float = 0.0
    last_observed: Observed | None = None
    in_background: int = 0  # actions still running beside the passes (the daemon's boot waits)
    retries: Retries | None = None  # failures for good, remembered across runs
    deferred: dict[Action, str] = field(default_factory=dict)  # waiting out an earlier failure: why

    @property
    def wake_at(self) -> float | None:
        """When something planned may be tried again (unix seconds): the daemon wakes then."""
        due = [t for t in (self.last_plan.wake_at if self.last_plan else None,
                           self.retries.next_due(time.time()) if self.retries and self.deferred else None)
               if t is not None]
        return min(due) if due else None

    @property
    def converged(self) -> bool:
        """Nothing left to do: in the daemon, but for what runs in the background and wakes it when done."""
        if self.last_plan is None or self.failures:
            return False
        return len(self.last_plan.actions) == self.in_background


class Background:
    """Where the daemon runs actions that wait (a VM's boot wait), so that they never hold a pass:
    the pool refill, a seed or another VM's start go on beside them. One at a time per action, each
    on a daemon thread (a stopping daemon does not wait for boots: the next one takes them over);
    when one ends, `done` is called, which wakes the daemon for the next pass."""

    def __init__(self, done: Callable[[Action], None]) -> None:
        self.done = done
        self.running: set[Action] = set()
        self.lock = threading.Lock()

    def busy(self, action: Action) -> bool:
        with self.lock:
            return action in self.running

    def submit(self, action: Action, run: Callable[[], object]) -> None:
        with self.lock:
            if action in self.running:
                return
            self.running.add(action)

        def task() -> None:
            try:
                run()
            finally:
                with self.lock:
                    self.running.discard(action)
                self.done(action)
        threading.Thread(target=task, name=f"warmvm-{action.kind}", daemon=True).start()


def reconcile(desired: Desired, drivers: Drivers, observe: Callable[[], Observed], log: Lifecycle,
              sleep: Callable[[float], None] = time.sleep, background: Background | None = None,
              retries: Retries | None = None) -> Result:
    """Passes until the plan is empty. With `background` (the daemon), actions that wait run beside
    the passes instead of in them, and an action that failed for good waits until `retries` says it
    may be tried again; without (a one-shot reconcile) it returns only when converged, and tries
    everything once more."""
    result = Result(retries=retries)
    try:
        _passes(desired, drivers, observe, log, sleep, background, result)
    finally:
        if retries is not None and result.last_plan is not None:
            retries.keep(result.last_plan.actions)
    return result


def _passes(desired: Desired, drivers: Drivers, observe: Callable[[], Observed], log: Lifecycle,
            sleep: Callable[[float], None], background: Background | None, result: Result) -> None:
    for _ in range(MAX_PASSES):
        start = time.perf_counter()
        observed = result.last_observed = observe()
        result.observe_ms += _ms(start)
        drivers.prepare(observed)
        start = time.perf_counter()
        result.last_plan = current = plan(desired, observed)
        result.plan_ms += _ms(start)
        todo = [a for a in current.actions if a not in result.failures]
        if background is not None and result.retries is not None:
            todo = _not_deferred(todo, result.retries, result)
        waits = [a for a in todo if a.waits] if background is not None else []
        blocked = _blocked(current.actions, result)
        todo = [a for a in todo if a not in waits and not (a.waits and getattr(a, "vm", None) in blocked)]
        if not todo and not waits:
            break
        delay = _apply_pass(todo, drivers, log, result, current.actions) if todo else 0.0
        if background is not None:
            # after this pass's own steps: a boot wait starts once its VM's start is recorded
            unsettled = _unsettled(current.actions, result)
            for action in waits:
                if getattr(action, "vm", None) not in unsettled:
                    background.submit(action, lambda a=action: _apply_one(a, drivers, log, result))  # type: ignore[misc]
            result.in_background = sum(1 for a in current.actions if background.busy(a))
            if not todo:
                break
        if delay:
            sleep(min(delay, MAX_DELAY))


def _not_deferred(todo: list[Action], retries: Retries, result: Result) -> list[Action]:
    now = time.time()
    result.deferred = {}
    for action in todo:
        entry = retries.waiting(action, now)
        if entry is not None:
            result.deferred[action] = (f"failed {entry.failures} times in a row ({entry.error}); "
                                       f"tried again in {entry.retry_at - now:.0f}s")
    return [a for a in todo if a not in result.deferred]


def _unsettled(planned: tuple[Action, ...], result: Result) -> set[str | None]:
    """VMs with a step of this plan that did not go through (failed, to be retried, or waiting out an
    earlier failure), once this pass applied its steps: nothing waits for their boot."""
    retried = {getattr(a, "vm", None) for a in planned if not a.waits and result.outcomes.get(a) == Outcome.RETRY}
    return retried | _blocked(planned, result)


def _blocked(planned: tuple[Action, ...], result: Result) -> set[str | None]:
    """VMs with a step this pass will not try (it failed for good in this run, or waits out an earlier
    failure)."""
    return {getattr(a, "vm", None) for a in planned if a in result.failures or a in result.deferred}


def _apply_pass(todo: list[Action], drivers: Drivers, log: Lifecycle, result: Result,
                planned: tuple[Action, ...]) -> float:
    """Applies one pass's actions, parallel ones side by side; returns the longest retry delay asked.
    VMs are provisioned side by side too: each VM's own steps (lease, TAP, disk, start) run in order,
    the VMs' chains at once, so a VM's start never waits for the provisioning of the VMs before it."""
    result.passes += 1
    delay = 0.0
    for group in _groups(todo):
        if group[0][0].waits:
            unsettled = _unsettled(planned, result)
            group = [chain for chain in group if getattr(chain[0], "vm", None) not in unsettled]
            if not group:
                continue
        if len(group) == 1 and len(group[0]) == 1:
            delay = max(delay, _apply_one(group[0][0], drivers, log, result))
            continue
        with ThreadPoolExecutor(max_workers=min(len(group), MAX_PARALLEL)) as pool:
            delays = list(pool.map(lambda chain: _apply_chain(chain, drivers, log, result), group))
        delay = max(delay, *delays)
    return delay


def _apply_chain(chain: list[Action], drivers: Drivers, log: Lifecycle, result: Result) -> float:
    """One VM's steps in order, up to the first that does not go through (the next pass plans the rest)."""
    delay = 0.0
    for action in chain:
        delay = max(delay, _apply_one(action, drivers, log, result))
        if result.outcomes.get(action) != Outcome.OK:
            break
    return delay


def _groups(actions: list[Action]) -> list[list[list[Action]]]:
    """What runs at once: a list of chains, each applied in order, the chains side by side. A run of
    adjacent VM steps (Action.step >= 0) becomes one chain per VM; a run of adjacent parallel actions
    of one type, one chain each; every other action alone, in order."""
    out: list[list[list[Action]]] = []
    for action in actions:
        last = out[-1] if out else None
        if action.step >= 0 and last and last[0][0].step >= 0:
            chain = next((c for c in last if getattr(c[0], "vm", None) == getattr(action, "vm", None)), None)
            if chain is not None:
                chain.append(action)
            else:
                last.append([action])
        elif action.parallel and last and last[0][0].parallel and type(last[0][0]) is type(action):
            last.append([action])
        else:
            out.append([[action]])
    return out


def _apply_one(action: Action, drivers: Drivers, log: Lifecycle, result: Result) -> float:
    """Applies one action and logs it; returns how long to wait before retrying it (0: no retry)."""
    start = time.perf_counter()
    try:
        details = drivers.apply(action)
    except TemporaryError as e:
        result.outcomes[action] = Outcome.RETRY
        attempt = result.attempts[action] = result.attempts.get(action, 0) + 1
        log.event(action.kind, action.subject, Outcome.RETRY, _ms(start), error=str(e))
        return e.delay if e.delay is not None else backoff(attempt)
    except PermanentError as e:
        result.outcomes[action] = Outcome.FAILED
        result.failures[action] = str(e)
        if result.retries is not None:
            result.retries.record(action, str(e), time.time())
        log.event(action.kind, action.subject, Outcome.FAILED, _ms(start), error=str(e))
        return 0.0
    result.outcomes[action] = Outcome.OK
    result.applied += 1
    result.failures.pop(action, None)
    if result.retries is not None:
        result.retries.worked(action)
    log.event(action.kind, action.subject, Outcome.OK, _ms(start), **details)
    return 0.0


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
