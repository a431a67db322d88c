"""The fleet as the store holds it, read at one revision: specs, placements, allocations, hosts and
the statuses they report. Pure: `fleet_from` parses what observe.py read.

A value that does not parse (written by hand, or by another version) is reported under `problems`,
naming its key, and skipped: the rest of the fleet goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar

from ..base import records
from ..base.errors import WarmvmError
from ..specs.kinds import SCHEMAS, ImageSpec, VMSpec
from . import keys

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Need:
    """What a VM reserves on its host."""

    vcpus: int
    memory: int

    def fits(self, free: Need) -> bool:
        return self.vcpus <= free.vcpus and self.memory <= free.memory

    def __add__(self, other: Need) -> Need:
        return Need(vcpus=self.vcpus + other.vcpus, memory=self.memory + other.memory)

    def __sub__(self, other: Need) -> Need:
        return Need(vcpus=self.vcpus - other.vcpus, memory=self.memory - other.memory)

    def __str__(self) -> str:
        return f"{self.vcpus} vCPUs, {self.memory >> 20}Mi"


@dataclass(frozen=True, kw_only=True)
class HostInfo:
    """/warmvm/host/HOST/info: written by the host's agent when it starts (and when it changes)."""

    LABEL: ClassVar[str] = "host info"
    labels: dict[str, str]
    vcpus: int  # capacity: what VMs may reserve
    memory: int
    reach: str  # how `fleet ssh` gets there: netns:NAME, ssh:USER@ADDR or local
    state: str  # the host's state directory
    command: list[str]  # how warmvm is run there

    @property
    def capacity(self) -> Need:
        return Need(vcpus=self.vcpus, memory=self.memory)


@dataclass(frozen=True, kw_only=True)
class Presence:
    """/warmvm/host/HOST/alive, on the agent's lease: a live agent holds the host."""

    LABEL: ClassVar[str] = "presence"
    instance: str  # the state directory's identity: the same host's agent, restarted, takes it over
    pid: int
    since: float


@dataclass(frozen=True, kw_only=True)
class Placement:
    LABEL: ClassVar[str] = "placement"
    host: str
    epoch: int  # grows by one each time the VM is placed anew (on host loss, with onHostLoss: recreate)
    vcpus: int  # what it reserved
    memory: int
    placed: float

    @property
    def need(self) -> Need:
        return Need(vcpus=self.vcpus, memory=self.memory)


@dataclass(frozen=True, kw_only=True)
class Alloc:
    """/warmvm/alloc/HOST: the sum of its placements' reservations; every placement compares it."""

    LABEL: ClassVar[str] = "allocation"
    vcpus: int = 0
    memory: int = 0
    vms: int = 0

    @property
    def need(self) -> Need:
        return Need(vcpus=self.vcpus, memory=self.memory)

    def plus(self, need: Need) -> Alloc:
        return Alloc(vcpus=self.vcpus + need.vcpus, memory=self.memory + need.memory, vms=self.vms + 1)

    def minus(self, need: Need) -> Alloc:
        return Alloc(vcpus=self.vcpus - need.vcpus, memory=self.memory - need.memory, vms=self.vms - 1)


@dataclass(frozen=True, kw_only=True)
class VmStatus:
    """/warmvm/status/HOST/VM: what the host reports of a VM it runs (written only when it changes)."""

    LABEL: ClassVar[str] = "VM status"
    phase: str
    reason: str = ""
    ip: str | None = None
    boot: str | None = None
    created: float | None = None
    epoch: int = 0


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A value and the revision its key was last written at (what a transaction compares)."""

    value: T
    revision: int


@dataclass(frozen=True)
class SpecObject:
    """A spec document as stored, and what placement needs to know of it."""

    kind: str
    name: str
    document: dict[str, Any]
    revision: int
    selector: dict[str, str] | None  # hostSelector
    network: str | None = None  # a VM's
    image: str | None = None
    need: Need | None = None
    default: bool = False  # the image of VMs that name none
    recreate: bool = False  # a VM's onHostLoss: recreate (else wait)
    lost_after: float = 60.0  # a VM's lostAfter


@dataclass(frozen=True)
class Fleet:
    revision: int
    specs: dict[tuple[str, str], SpecObject] = field(default_factory=dict)
    placements: dict[str, Versioned[Placement]] = field(default_factory=dict)
    allocs: dict[str, Versioned[Alloc]] = field(default_factory=dict)
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    alive: dict[str, Versioned[Presence]] = field(default_factory=dict)
    statuses: dict[tuple[str, str], VmStatus] = field(default_factory=dict)  # (host, vm)
    pending: dict[str, Versioned[str]] = field(default_factory=dict)  # vm -> why it is not placed
    placer: Versioned[str] | None = None  # the host whose agent places now
    lost: dict[str, Versioned[float]] = field(default_factory=dict)  # host -> since when it has no presence
    cordoned: dict[str, Versioned[float]] = field(default_factory=dict)  # host -> since when
    problems: tuple[str, ...] = ()

    def of_kind(self, kind: str) -> dict[str, SpecObject]:
        return {name: s for (k, name), s in self.specs.items() if k == kind}


Change = tuple[str, bytes | None, int]  # a key, its value (None: deleted), the revision it was written at


def fleet_from(items: list[tuple[str, bytes, int]], revision: int) -> Fleet:
    """The fleet in what a range read of /warmvm/ at `revision` returned (key, value, mod revision)."""
    return replace(with_events(Fleet(0), list(items)), revision=revision)


def with_events(fleet: Fleet, events: list[Change]) -> Fleet:
    """The fleet after a watch's changes, so that an agent keeps it current without reading the whole
    store at every change; the fleet given is left as it was."""
    copy = replace(fleet, specs=dict(fleet.specs), placements=dict(fleet.placements), allocs=dict(fleet.allocs),
                   hosts=dict(fleet.hosts), alive=dict(fleet.alive), statuses=dict(fleet.statuses),
                   pending=dict(fleet.pending), lost=dict(fleet.lost), cordoned=dict(fleet.cordoned))
    problems = dict(p.split(": skipped: ", 1) for p in fleet.problems if ": skipped: " in p)
    placer, revision = fleet.placer, fleet.revision
    for key, value, mod in events:
        revision = max(revision, mod)
        problems.pop(key, None)
        if key == keys.placer():
            placer = None
        else:
            _forget(copy, keys.parts(key))
        if value is None:
            continue
        try:
            if key == keys.placer():
                placer = Versioned(str(json.loads(value)["host"]), mod)
            else:
                _take(copy, keys.parts(key), value, mod)
        except (WarmvmError, ValueError, KeyError, TypeError) as e:
            problems[key] = str(e)
    return replace(copy, revision=revision, placer=placer,
                   problems=tuple(f"{k}: skipped: {why}" for k, why in problems.items()))


def _forget(fleet: Fleet, where: list[str]) -> None:
    match where:
        case ["spec", segment, name] if segment in keys.KINDS.values():
            fleet.specs.pop(({v: k for k, v in keys.KINDS.items()}[segment], name), None)
        case ["placement", vm]:
            fleet.placements.pop(vm, None)
        case ["alloc", host]:
            fleet.allocs.pop(host, None)
        case ["pending", vm]:
            fleet.pending.pop(vm, None)
        case ["host", host, "alive"]:
            fleet.alive.pop(host, None)
        case ["host", host, "info"]:
            fleet.hosts.pop(host, None)
        case ["status", host, vm]:
            fleet.statuses.pop((host, vm), None)
        case ["lost", host]:
            fleet.lost.pop(host, None)
        case ["cordon", host]:
            fleet.cordoned.pop(host, None)


def _take(fleet: Fleet, where: list[str], value: bytes, mod: int) -> None:
    data = json.loads(value)
    match where:
        case ["spec", kind, name]:
            spec = _spec(kind, name, data, mod)
            fleet.specs[(spec.kind, name)] = spec
        case ["placement", vm]:
            fleet.placements[vm] = Versioned(records.from_dict(Placement, data, "placement"), mod)
        case ["alloc", host]:
            fleet.allocs[host] = Versioned(records.from_dict(Alloc, data, "allocation"), mod)
        case ["pending", vm]:
            fleet.pending[vm] = Versioned(str(data["reason"]), mod)
        case ["host", host, "alive"]:
            fleet.alive[host] = Versioned(records.from_dict(Presence, data, "presence"), mod)
        case ["host", host, "info"]:
            fleet.hosts[host] = records.from_dict(HostInfo, data, "host info")
        case ["status", host, vm]:
            fleet.statuses[(host, vm)] = records.from_dict(VmStatus, data, "VM status")
        case ["lost", host]:
            fleet.lost[host] = Versioned(float(data["since"]), mod)
        case ["cordon", host]:
            fleet.cordoned[host] = Versioned(float(data["since"]), mod)
        case _:
            raise ValueError("not a key warmvm writes")


def _spec(segment: str, name: str, document: Any, revision: int) -> SpecObject:
    kind = {v: k for k, v in keys.KINDS.items()}[segment]
    if not isinstance(document, dict) or document.get("kind") != kind or \
            (document.get("metadata") or {}).get("name") != name:
        raise ValueError(f"not a {kind} document named {name!r}")
    errors: list[tuple[Any, str]] = []
    parsed = SCHEMAS[kind].validate(document.get("spec") or {}, ("spec",), errors)
    if parsed is None:
        raise ValueError("; ".join(f"{'.'.join(map(str, path))}: {why}" for path, why in errors[:3]))
    selector = parsed.host_selector
    if isinstance(parsed, VMSpec):
        return SpecObject(kind, name, document, revision, selector, parsed.network, parsed.image,
                          Need(vcpus=parsed.vcpus, memory=parsed.memory), recreate=parsed.on_host_loss == "recreate",
                          lost_after=parsed.lost_after)
    default = isinstance(parsed, ImageSpec) and parsed.default
    return SpecObject(kind, name, document, revision, selector, default=default)
