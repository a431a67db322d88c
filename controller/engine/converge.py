"""One reconcile of the host to the specs, as `warmvm reconcile` does it once and `warmvm watch` on
every wake-up: the specs loaded (and refused when another user could write them), the state
directory locked, the loop run with the host's observers and drivers, and the closing report.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import PermanentError
from ..base.model import Desired, Policy
from ..specs.documents import spec_files
from ..specs.load import load
from ..statedir.layout import Layout
from ..statedir.safety import unsafe_reason
from ..statedir.store import Store
from .host import ImageFiles, open_host
from .retries import Retries

if TYPE_CHECKING:
    from ..base.events import Lifecycle
    from .reconcile import Background, Result


def load_specs(root: Path, policy: Policy | None = None) -> Desired:
    """The specs under `root`, their image files checked on this host, under the command's policy.
    A spec decides which host files a guest receives: a spec directory or file another user could
    write is refused (sshd's StrictModes), as the state directory is."""
    for path in [root, *spec_files(root)]:
        reason = unsafe_reason(path)
        if reason is not None:
            raise PermanentError(f"spec refused: {reason} (chown root and chmod go-w)")
    desired = load(root, ImageFiles())
    return replace(desired, policy=policy) if policy is not None else desired


@dataclass(frozen=True)
class Options:
    """What a reconcile needs from its command line."""

    specs: Path
    policy: Policy
    clone_method: str = "auto"  # or a CloneMethod the state directory supports
    boot_timeout: float = 60.0
    lock_timeout: float = 5.0


@dataclass(frozen=True)
class Converged:
    desired: Desired
    result: Result
    ms: dict[str, float]  # where the time went: total, lock wait, load

    @property
    def ok(self) -> bool:
        last = self.result.last_plan
        return self.result.converged and not self.desired.errors and not (last and (last.problems or last.held_back))


def converge(store: Store, options: Options, log: Lifecycle, background: Background | None = None,
             retries: Retries | None = None) -> Converged:
    """One reconcile of the host to the specs, under the state directory's lock: what `warmvm
    reconcile` does once and `warmvm watch` on every wake-up (with its `retries`, kept across its
    passes; a one-shot reconcile reads them from the state directory)."""
    from .reconcile import reconcile
    start = time.perf_counter()
    with store.lock(options.lock_timeout):
        locked = time.perf_counter()
        desired = load_specs(options.specs, options.policy)
        for error in desired.errors:
            print(error, file=sys.stderr)
        loaded = time.perf_counter()
        host = open_host(store, True, options.clone_method)
        host.boot_timeout = options.boot_timeout
        drivers = host.drivers(log.progress if sys.stderr.isatty() else None)
        if retries is None:
            layout = Layout(store.root)
            retries = Retries(layout.retries, layout.tmp)
        try:
            result = reconcile(desired, drivers, host.observer(desired), log, background=background,
                               retries=retries)
        finally:
            drivers.close()
            retries.save()
    return Converged(desired, result, {"total": _ms(start), "lock": (locked - start) * 1000,
                                       "load": (loaded - locked) * 1000})


def report(done: Converged, log: Lifecycle) -> None:
    """The closing lines of a reconcile: its problems, what it held back and why, one summary."""
    last, result = done.result.last_plan, done.result
    for problem in last.problems if last else ():
        print(f"problem: {problem}", file=sys.stderr)
    for action, why in sorted(result.deferred.items(), key=lambda item: item[0].subject):
        print(f"waiting: {action.kind} {action.subject}: {why}", file=sys.stderr)
    held = last.held_back if last else ()
    if held and last is not None:
        print(f"held back: {'; '.join(last.holds)}", file=sys.stderr)
        for action in held:
            print(f"(held back) {action.describe()}", file=sys.stderr)
    log.summary(f"reconcile: {'converged' if done.ok else 'NOT converged'}: {result.applied} applied, "
                f"{len(result.failures)} failed, {len(held)} held back, {len(done.desired.errors)} spec errors, "
                f"{result.passes} passes, {done.ms['total']:.1f}ms (lock wait {done.ms['lock']:.1f}, "
                f"load {done.ms['load']:.1f}, observe {result.observe_ms:.1f}, plan {result.plan_ms:.1f})",
                converged=done.ok)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


