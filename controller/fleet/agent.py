"""The fleet agent: a host's side of the fleet, beside the daemon's passes (`warmvm agent`).

It holds the host's presence on a lease (renewed every TTL/3), watches /warmvm/ from the revision
it read, and on every change reads the fleet, places pending VMs (any agent may: each placement is
one guarded transaction) and writes its host's share as spec files in the state directory, which
the daemon's passes converge on like any specs. After each pass it writes back the status of each
VM it runs, only where it changed: an idle fleet costs the store the lease keep-alives only.

The store is never in the way of what runs: unreachable, the agent goes on with the share it has
on disk, reports store_up 0, and catches up when the store answers again.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..adapters.etcd import CompactedError, Compare, Delete, Etcd, Put, StoreUnavailable
from ..base import records
from ..base.errors import PermanentError, TemporaryError, WarmvmError
from ..base.model import Desired, Policy
from ..statedir.layout import Layout
from ..vms.state import VmsView
from . import keys
from .driver import encode, encode_record, guard, mark_lost, place_pending, recreate_lost
from .host import ShareFiles
from .observe import read_fleet
from .plan import share, status_of
from .state import Fleet, HostInfo, Presence, VmStatus, with_events

RETRY = 1.0  # seconds between attempts while the store does not answer
IGNORED = ("status", "pending")  # what hosts and placers report: nothing for an agent to act on


@dataclass(frozen=True)
class AgentConfig:
    host: str
    info: HostInfo
    instance: str  # the state directory's identity
    ttl: int = 15  # the presence lease; renewed every ttl/3
    place: bool = True  # this agent places pending VMs too


class HostHeld(PermanentError):
    """Another live agent (another state directory) holds this host name."""


class FleetMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.store_up = Gauge("warmvm_fleet_store_up", "1 when the store answered the last call", registry=r)
        self.renewals_failed = Counter("warmvm_fleet_lease_renewals_failed_total",
                                       "Keep-alives of the host's lease that failed", registry=r)
        self.share_vms = Gauge("warmvm_fleet_share_vms", "VMs placed on this host", registry=r)
        self.status_writes = Counter("warmvm_fleet_status_writes_total", "VM statuses written to the store",
                                     registry=r)
        self.placed = Counter("warmvm_fleet_placements_total", "VMs this agent placed", registry=r)
        self.conflicts = Counter("warmvm_fleet_placement_conflicts_total",
                                 "Placements lost to a racing placer (read again, tried again)", registry=r)


class Agent:
    def __init__(self, connect: Callable[[], Etcd], config: AgentConfig, layout: Layout,
                 registry: CollectorRegistry) -> None:
        self.connect, self.config, self.files = connect, config, ShareFiles(layout)
        self.metrics = FleetMetrics(registry)
        self.etcd = connect()  # the daemon thread's: presence at start, statuses after passes
        self.lease = 0
        self.dirty = threading.Event()
        self.lock = threading.Lock()
        self.fleet: Fleet | None = None  # as the watch keeps it
        self.written: dict[str, VmStatus] | None = None  # statuses as the store has them (None: not read yet)
        self.epochs: dict[str, int] = {}
        self.reported: set[str] = set()  # the store's malformed values already said
        self.wake: Callable[[str], None] = lambda reason: None
        self.renewed = time.monotonic()  # the presence's last renewal
        self.up = True  # the last keep-alive reached the store
        self.fenced = False  # not renewed for longer than the TTL: `recreate` VMs do not run here
        self.last: Fleet | None = None  # the fleet the last share was written from
        self.synced = False  # a share was written from the store: it is the authority on removals
        self.recheck_at: float | None = None  # when a lost host's next recreate VM is due (the placer's)

    # --- presence ----------------------------------------------------------------------------

    def claim(self) -> None:
        """Takes the host's presence on a new lease. Refuses (PermanentError) a host another live agent
        holds; the same host's agent restarted on the same state directory takes its presence over."""
        etcd, host = self.etcd, self.config.host
        seen = etcd.get(keys.alive(host))
        if seen is not None:
            held = records.from_dict(Presence, _load(seen.value), keys.alive(host))
            if held.instance != self.config.instance:
                raise HostHeld(f"host {host} is held by a live agent (pid {held.pid}, state {held.instance}, "
                                     f"since {time.strftime('%H:%M:%S', time.localtime(held.since))}); "
                                     "not starting a second one")
        lease = etcd.grant(self.config.ttl)
        presence = Presence(instance=self.config.instance, pid=os.getpid(), since=time.time())
        won, _ = etcd.txn([guard(keys.alive(host), seen.mod_revision if seen else 0)],
                          [Put(keys.alive(host), encode_record(presence), lease),
                           Put(keys.info(host), encode_record(self.config.info))])
        if not won:
            etcd.revoke(lease)
            raise TemporaryError(f"host {host}: its presence changed while it was claimed; trying again")
        if seen is not None and seen.lease:
            _quietly(lambda: etcd.revoke(seen.lease))  # our own earlier life's
        self.lease = lease

    def _keepalive(self, stop: threading.Event) -> None:
        etcd = self.connect()
        while not stop.wait(self.config.ttl / 3 if self.lease else RETRY):
            try:
                if not self.lease or etcd.keepalive(self.lease) < 0:
                    self.lease = 0
                    self._reclaim()
                if self.lease:
                    self.renewed = time.monotonic()
                self.metrics.store_up.set(1)
                if not self.up:  # back: a pass reports what the store missed meanwhile
                    self.up = True
                    self.dirty.set()
                    self.wake("store-back")
            except WarmvmError as e:
                self.up = False
                self.metrics.renewals_failed.inc()
                self.metrics.store_up.set(0)
                print(f"warmvm agent: lease: {e}", file=sys.stderr)
            self._fence(time.monotonic() - self.renewed > self.config.ttl)

    def _fence(self, fenced: bool) -> None:
        """Past its TTL without a renewal, the host may be taken for lost and its `recreate` VMs placed
        anew elsewhere: they stop here at once (its `wait` VMs go on). Back, they run again if still
        placed here."""
        if fenced == self.fenced:
            return
        self.fenced = fenced
        print("warmvm agent: " + ("fenced: the presence was not renewed within its TTL: recreate VMs stop"
                                  if fenced else "the presence is renewed: the fence is lifted"), file=sys.stderr)
        if fenced and self.last is not None and self.files.write(self._share(self.last), self.epochs):
            self.wake("fleet")
        self.dirty.set()

    def _reclaim(self) -> None:
        try:
            self.claim()
            self.dirty.set()  # placements may have changed while it was away
        except PermanentError as e:
            print(f"warmvm agent: {e}", file=sys.stderr)

    # --- the fleet's changes -----------------------------------------------------------------

    def start(self, wake: Callable[[str], None], stop: threading.Event) -> None:
        self.wake = wake
        self.dirty.set()
        for name, run in (("lease", self._keepalive), ("watch", self._watch), ("sync", self._sync_loop)):
            threading.Thread(target=_guarded, args=(name, run, stop), name=f"warmvm-fleet-{name}", daemon=True).start()

    def _watch(self, stop: threading.Event) -> None:
        """Keeps the fleet current: one whole read, then the watch's changes from its revision on."""
        etcd = self.connect()
        while not stop.is_set():
            try:
                fleet = read_fleet(etcd)
                self._current(fleet)
                for batch in etcd.watch(keys.ROOT, fleet.revision + 1, stop):
                    fleet = with_events(fleet, [(e.key, e.value, e.revision) for e in batch])
                    self._current(fleet, relevant=any(keys.parts(e.key)[0] not in IGNORED for e in batch))
            except (StoreUnavailable, CompactedError) as e:
                self.metrics.store_up.set(0)
                print(f"warmvm agent: watch: {e}", file=sys.stderr)
                with self.lock:
                    self.fleet = None  # read again once the store answers
                stop.wait(RETRY)
                self.dirty.set()

    def _current(self, fleet: Fleet, relevant: bool = True) -> None:
        with self.lock:
            self.fleet = fleet
        if relevant:
            self.dirty.set()

    def _sync_loop(self, stop: threading.Event) -> None:
        etcd = self.connect()
        self.dirty.set()  # (again, after an internal error)
        offset = random.Random(self.config.host)
        while not stop.is_set():
            if not self.dirty.wait(1.0) and not (self.recheck_at and time.time() >= self.recheck_at):
                continue
            self.dirty.clear()
            try:
                self._sync(etcd, offset)
                self.metrics.store_up.set(1)
            except WarmvmError as e:
                self.metrics.store_up.set(0)
                print(f"warmvm agent: sync: {e}", file=sys.stderr)
                stop.wait(RETRY)
                self.dirty.set()

    def _sync(self, etcd: Etcd, order: random.Random) -> None:
        """Places what is pending (the placer) and writes the share, from the fleet the watch keeps
        current (read whole when there is none yet); a placement made from a fleet that was not quite
        current fails its transaction, and is made again from a fresh read."""
        with self.lock:
            fleet = self.fleet
        fleet = fleet or read_fleet(etcd)
        if self.config.place and self._placing(etcd, fleet):
            mark_lost(etcd, fleet, time.time())
            lines, self.recheck_at = recreate_lost(etcd, fleet, time.time())
            for line in lines:
                print(f"warmvm agent: {line}", file=sys.stderr)
            done = place_pending(etcd, lambda vms: order.sample(vms, len(vms)), fleet)
            self.metrics.placed.inc(done.placed)
            self.metrics.conflicts.inc(done.conflicts)
        for problem in set(fleet.problems) - self.reported:  # each once, not at every change
            print(f"warmvm agent: {problem}", file=sys.stderr)
        self.reported = set(fleet.problems)
        mine = {vm: p.value.epoch for vm, p in fleet.placements.items() if p.value.host == self.config.host}
        self.epochs = mine
        self.metrics.share_vms.set(len(mine))
        if self.written is None:
            self.written = {vm: s for (h, vm), s in fleet.statuses.items() if h == self.config.host}
        self.last = fleet
        if self.files.write(self._share(fleet), mine):
            self.wake("fleet")
        self.synced = True

    def _share(self, fleet: Fleet) -> dict[str, str]:
        return share(fleet, self.config.host, self.config.info.labels, self.fenced)

    def policy(self, policy: Policy) -> Policy:
        """Once its share comes from the store, removals the store decides (a VM deleted, or placed
        elsewhere) are confirmed: they are not the accidents the holds are for; removed disks still go
        to the trash."""
        return replace(policy, confirm_removals=True) if self.synced else policy

    def _placing(self, etcd: Etcd, fleet: Fleet) -> bool:
        """Whether this agent is the fleet's placer: it is, or none is and it becomes one (on its
        presence lease, so that the role passes on within a TTL of its death)."""
        if fleet.placer is not None:
            return bool(fleet.placer.value == self.config.host)
        if not self.lease:
            return False
        won, _ = etcd.txn([Compare(keys.placer(), "VERSION", 0)],
                          [Put(keys.placer(), encode({"host": self.config.host}), self.lease)])
        return bool(won)

    # --- after a pass ------------------------------------------------------------------------

    def passed(self, desired: Desired, observed: VmsView | None) -> None:
        """Each VM's status as this pass left it, written where it changed; a VM this host no longer
        has loses its status."""
        if observed is None or self.written is None:
            return
        host = self.config.host
        now = {name: status_of(name, desired.vms.get(name), observed, self.epochs.get(name, 0))
               for name in set(desired.vms) | set(observed.vms)}
        writes: list[Put | Delete] = [Put(keys.status(host, vm), encode_record(s))
                                      for vm, s in sorted(now.items()) if self.written.get(vm) != s]
        writes += [Delete(keys.status(host, vm)) for vm in sorted(set(self.written) - set(now))]
        try:
            for start in range(0, len(writes), 100):
                self.etcd.txn([], writes[start:start + 100])
        except WarmvmError as e:
            self.metrics.store_up.set(0)
            print(f"warmvm agent: status: {e}", file=sys.stderr)
            return
        self.metrics.status_writes.inc(len(writes))
        self.written = now

    def close(self) -> None:
        """A clean stop lets the presence go at once (kill -9 lets it expire after the TTL)."""
        if self.lease:
            _quietly(lambda: self.etcd.revoke(self.lease))


def _guarded(name: str, run: Callable[[threading.Event], None], stop: threading.Event) -> None:
    """A thread of the agent: a bug in it is said, with where, and the thread goes on (it must not
    silently stop renewing the lease, watching or syncing)."""
    while not stop.is_set():
        try:
            run(stop)
        except Exception as e:
            print(f"warmvm agent: internal error in {name} (it carries on): {type(e).__name__}: {e}\n"
                  f"{''.join(traceback.format_exception(e)[-3:])}", file=sys.stderr, end="")
            stop.wait(RETRY)


def _load(value: bytes) -> dict[str, object]:
    data = json.loads(value)
    if not isinstance(data, dict):
        raise PermanentError("not a JSON object")
    return data


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except WarmvmError:
        pass
