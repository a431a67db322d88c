"""Network actions: bridges, the pool, TAPs handed to VMs and back, and the guests' containment."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import ClassVar

from ..base.actions import PHASE_CLEANUP, PHASE_SETUP, PHASE_WARM, Action
from ..base.kinds import Role
from .firewall import Ruleset
from .hostfilter import HostRules


@dataclass(frozen=True)
class BridgeEnsure(Action):
    kind: ClassVar[str] = "bridge_ensure"
    about: ClassVar[tuple[str, str]] = ("network", "network")
    phase: ClassVar[int] = PHASE_SETUP
    network: str
    bridge: str
    gateway: IPv4Interface


@dataclass(frozen=True)
class BridgeDelete(Action):
    kind: ClassVar[str] = "bridge_delete"
    about: ClassVar[tuple[str, str]] = ("network", "network")
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    network: str
    bridge: str


@dataclass(frozen=True)
class PoolGrow(Action):
    kind: ClassVar[str] = "pool_grow"
    about: ClassVar[tuple[str, str]] = ("pool", "network")
    phase: ClassVar[int] = PHASE_WARM
    network: str
    bridge: str
    prefix: str
    count: int
    isolated: bool | None = None  # True: the new ports are isolated (isolateVMs)


@dataclass(frozen=True)
class PoolShrink(Action):
    kind: ClassVar[str] = "pool_shrink"
    about: ClassVar[tuple[str, str]] = ("pool", "network")
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    network: str
    taps: tuple[str, ...]


@dataclass(frozen=True)
class TapAttach(Action):
    """Re-attach and bring up one of our TAPs that drifted (detached or down)."""

    kind: ClassVar[str] = "tap_attach"
    about: ClassVar[tuple[str, str]] = ("tap", "tap")
    phase: ClassVar[int] = PHASE_SETUP
    network: str
    bridge: str
    tap: str
    vm: str | None = None  # the VM holding it; None: an idle pool TAP
    isolated: bool | None = None  # the port's isolation to set (isolateVMs); None: leave it as it is


@dataclass(frozen=True)
class TapClaim(Action):
    """Give a VM its TAP: an idle one from the pool, or a new one when the pool is empty."""

    kind: ClassVar[str] = "tap_claim"
    step: ClassVar[int] = 1
    vm: str
    network: str
    bridge: str
    prefix: str
    tap: str | None  # the idle TAP it takes; None: a new one, named by the allocator (the VM starts next pass)
    isolated: bool | None = None  # True: a new TAP's port is isolated (isolateVMs)


@dataclass(frozen=True)
class TapRelease(Action):
    """A VM's TAP goes back to its pool (`keep`), or is deleted when the pool is full."""

    kind: ClassVar[str] = "tap_release"
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    vm: str
    network: str
    bridge: str
    tap: str
    keep: bool


@dataclass(frozen=True)
class DeviceAdopt(Action):
    """Re-mark a device marked before marks named their instance as this instance's."""

    kind: ClassVar[str] = "device_adopt"
    about: ClassVar[tuple[str, str]] = ("network", "network")
    phase: ClassVar[int] = PHASE_SETUP
    network: str
    device: str
    role: Role
    vm: str | None = None


@dataclass(frozen=True)
class FirewallSync(Action):
    """Replace our nftables tables with `rules` (the bridge table) and `host` (the inet table), whole,
    in one transaction. Before anything else in a pass: a guest starts only on a TAP whose rules
    already name it."""

    kind: ClassVar[str] = "firewall_sync"
    about: ClassVar[tuple[str, str]] = ("firewall", "table")
    phase: ClassVar[int] = PHASE_SETUP
    table: str
    rules: Ruleset
    host: HostRules


IP_FORWARD = "net.ipv4.ip_forward"


@dataclass(frozen=True)
class ForwardingEnable(Action):
    """net.ipv4.ip_forward = 1, for networks with `egress: nat` (never turned off: other users of the
    host may rely on it). After the sync, so our forward rules are in place first."""

    kind: ClassVar[str] = "forwarding_enable"
    about: ClassVar[tuple[str, str]] = ("sysctl", "setting")
    phase: ClassVar[int] = PHASE_SETUP
    setting: str
    networks: tuple[str, ...]  # those that ask for it


@dataclass(frozen=True)
class FirewallDelete(Action):
    """Our tables go once no TAP of ours is left to contain."""

    kind: ClassVar[str] = "firewall_delete"
    about: ClassVar[tuple[str, str]] = ("firewall", "table")
    phase: ClassVar[int] = PHASE_CLEANUP
    deletes: ClassVar[bool] = True
    table: str
