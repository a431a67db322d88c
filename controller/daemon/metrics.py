"""The daemon's metrics, in the Prometheus text format (prometheus-client), on --metrics-addr.

Counters and histograms follow the lifecycle log (every applied action,
every pass, every wake-up); gauges are set from each pass's last
observation (pool, VMs by phase, seeds), so they say what is, not what was
done. They are served by endpoint.py (one thread, bounded connections).
"""

from __future__ import annotations

import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from ..base.model import Desired
from ..engine.state import Observed
from ..vms.plan import phase
from .endpoint import MetricsServer, exposure, listen

BOOT_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.pool_size = Gauge("warmvm_pool_size", "Idle TAPs a network's pool should hold", ["network"], registry=r)
        self.pool_idle = Gauge("warmvm_pool_idle_taps", "Idle TAPs a network's pool holds", ["network"], registry=r)
        self.actions = Counter("warmvm_actions_total", "Actions applied, by kind and outcome", ["kind", "outcome"],
                               registry=r)
        self.action_seconds = Histogram("warmvm_action_duration_seconds", "How long an action took", ["kind"],
                                        registry=r)
        self.create_to_ready = Histogram("warmvm_vm_create_to_ready_seconds",
                                         "From a VM's first provisioning step to its first SSH command",
                                         buckets=BOOT_BUCKETS, registry=r)
        self.passes = Counter("warmvm_reconcile_passes_total", "Reconcile passes run", registry=r)
        self.pass_seconds = Histogram("warmvm_reconcile_duration_seconds", "How long a pass took", registry=r)
        self.wakeups = Counter("warmvm_wakeups_total", "What woke the daemon for a pass", ["source"], registry=r)
        self.spec_errors = Gauge("warmvm_spec_errors", "Problems in the spec files now", registry=r)
        self.vms = Gauge("warmvm_vms", "VMs by phase", ["phase"], registry=r)
        self.seeds_ready = Gauge("warmvm_seeds_ready", "1 when an image's current work seed is ready", ["image"],
                                 registry=r)
        self.fs_free = Gauge("warmvm_state_fs_free_bytes", "Bytes free on the state directory's file system "
                             "(to an unprivileged writer, as QEMU writes guests' disks)", registry=r)
        self.fs_size = Gauge("warmvm_state_fs_size_bytes", "Bytes of the state directory's file system", registry=r)
        self.disks_virtual = Gauge("warmvm_work_disks_virtual_bytes", "Work disks' sizes, added up: what their "
                                   "guests may fill", registry=r)
        self.disks_used = Gauge("warmvm_work_disks_used_bytes", "Bytes work disks take on the file system now",
                                registry=r)

    def serve(self, addr: str) -> MetricsServer:
        """The endpoint on HOST:PORT (a bind error is one line); an address that is not loopback is said."""
        server = MetricsServer(listen(addr), self.page)
        note = exposure(server.address)
        if note:
            print(f"warmvm: {note}", file=sys.stderr, flush=True)
        return server

    def page(self, accept: str) -> tuple[bytes, str]:
        """The exposition in the format the scraper asks for (Prometheus asks for OpenMetrics)."""
        try:
            encoder, content_type = choose_encoder(accept)
        except (TypeError, ValueError):  # a malformed version in Accept: the plain text format
            encoder, content_type = choose_encoder("")
        return encoder(self.registry), content_type

    def event(self, stage: str, subject: str, outcome: str, ms: float, details: dict[str, Any]) -> None:
        self.actions.labels(stage, outcome).inc()
        self.action_seconds.labels(stage).observe(ms / 1000)
        if details.get("create_to_ready_ms"):
            self.create_to_ready.observe(details["create_to_ready_ms"] / 1000)

    def woke(self, reasons: set[str]) -> None:
        for reason in reasons:
            self.wakeups.labels(reason).inc()

    def passed(self, seconds: float, desired: Desired, observed: Observed | None) -> None:
        self.passes.inc()
        self.pass_seconds.observe(seconds)
        self.spec_errors.set(len(desired.errors))
        if observed is None:
            return
        for net in desired.networks.values():
            self.pool_size.labels(net.name).set(net.pool_size)
            self.pool_idle.labels(net.name).set(len(observed.net.idle_taps(net.name)))
        phases: dict[str, int] = {p: 0 for p in ("Pending", "Provisioning", "Booting", "Running", "Stopped",
                                                 "Failed", "Stopping", "CrashLoop", "Suspending", "Suspended")}
        for name in set(desired.vms) | set(observed.vms):
            current, _ = phase(name, desired.vms.get(name), observed)
            phases[current] = phases.get(current, 0) + 1
        for current, count in phases.items():
            self.vms.labels(current).set(count)
        for name, image in desired.images.items():
            state = observed.images.get(name)
            ready = image.seed is not None and state is not None and state.inputs in state.seeds \
                and state.seeds[state.inputs].base is not None
            self.seeds_ready.labels(name).set(1 if ready else 0)
        if observed.space is not None:
            self.fs_free.set(observed.space.free)
            self.fs_size.set(observed.space.size)
        self.disks_virtual.set(sum(d.size for d in observed.disks.values()))
        self.disks_used.set(sum(d.allocated for d in observed.disks.values()))
