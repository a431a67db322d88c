"""Ownership marks: how warmvm recognises the devices it created, and which instance made them.

Every device warmvm creates carries its mark in IFLA_IFALIAS, set before the
device can outlive the call that made it: `warmvm:INSTANCE:ROLE:NETWORK[:VM]`,
INSTANCE being the state directory's identity, so that two warmvm instances
on one host (or in one namespace) never touch each other's devices. A device
without a mark of this instance is foreign: never adopted, changed, attached
or deleted, whatever its name. Marks written before marks named their
instance (`warmvm:ROLE:NETWORK[:VM]`) parse with instance None; the network
planner adopts them only where this instance's specs and records name them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..base.kinds import Role

_PREFIX = "warmvm:"
_INSTANCE = re.compile(r"^[0-9a-f]{8}$")


@dataclass(frozen=True)
class Mark:
    instance: str | None  # None: a mark from before instances were named
    role: Role
    network: str
    vm: str | None = None

    def __str__(self) -> str:
        owner = f"{self.instance}:" if self.instance else ""
        tail = f":{self.vm}" if self.vm else ""
        return f"{_PREFIX}{owner}{self.role}:{self.network}{tail}"


def bridge_mark(instance: str | None, network: str) -> Mark:
    return Mark(instance, Role.BRIDGE, network)


def bridge_mac(instance: str | None, bridge: str) -> str:
    """The MAC address a bridge of ours is created with: fixed, so that it never follows its ports (a
    bridge without one takes the lowest of its ports' addresses, and a TAP joining it changes the
    gateway's MAC under running guests, whose replies then go astray until their ARP entry is
    probed again, some 5 s). Locally administered, unicast, outside QEMU's 52:54:00 of the guests."""
    digest = hashlib.sha256(f"warmvm-bridge:{instance}:{bridge}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def pool_mark(instance: str | None, network: str) -> Mark:
    return Mark(instance, Role.POOL, network)


def vm_mark(instance: str | None, network: str, vm: str) -> Mark:
    return Mark(instance, Role.VM, network, vm)


def parse_mark(alias: str | None) -> Mark | None:
    if not alias or not alias.startswith(_PREFIX):
        return None
    parts = alias[len(_PREFIX):].split(":")
    instance = parts.pop(0) if parts and _INSTANCE.match(parts[0]) else None
    if len(parts) == 2 and parts[0] in (Role.BRIDGE, Role.POOL) and parts[1]:
        return Mark(instance, Role(parts[0]), parts[1])
    if len(parts) == 3 and parts[0] == Role.VM and parts[1] and parts[2]:
        return Mark(instance, Role.VM, parts[1], parts[2])
    return None
