"""Ownership marks: how warmvm recognises the devices it created.

Every device warmvm creates carries its mark in IFLA_IFALIAS, set before the
device can outlive the call that made it. A device without a warmvm mark is
foreign: never adopted, changed, attached or deleted, whatever its name.
"""

from __future__ import annotations

from dataclasses import dataclass

_PREFIX = "warmvm:"


@dataclass(frozen=True)
class Mark:
    role: str  # "bridge" | "pool" | "vm"
    network: str
    vm: str | None = None

    def __str__(self) -> str:
        tail = f":{self.vm}" if self.vm else ""
        return f"{_PREFIX}{self.role}:{self.network}{tail}"


def bridge_mark(network: str) -> Mark:
    return Mark("bridge", network)


def pool_mark(network: str) -> Mark:
    return Mark("pool", network)


def vm_mark(network: str, vm: str) -> Mark:
    return Mark("vm", network, vm)


def parse_mark(alias: str | None) -> Mark | None:
    if not alias or not alias.startswith(_PREFIX):
        return None
    parts = alias[len(_PREFIX):].split(":")
    if len(parts) == 2 and parts[0] in ("bridge", "pool") and parts[1]:
        return Mark(parts[0], parts[1])
    if len(parts) == 3 and parts[0] == "vm" and parts[1] and parts[2]:
        return Mark("vm", parts[1], parts[2])
    return None
