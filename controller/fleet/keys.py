"""Where everything lives in the store. Pure.

    /warmvm/spec/KIND/NAME      a spec document (network, image, vm) as `fleet apply` checked it:
                                JSON, relative paths made absolute              written by operators
    /warmvm/placement/VM        the host a VM is placed on, its epoch and what it reserved
    /warmvm/alloc/HOST          what is reserved on a host: the sum of its placements
    /warmvm/pending/VM          why a VM is not placed (fits nowhere)           written by placers
    /warmvm/placer              the agent that places now, on its lease (one at a time: no races
                                among agents; `fleet place` may still race it, safely)
    /warmvm/lost/HOST           since when a host has been seen without its presence    written by placers
    /warmvm/cordon/HOST         the host takes no new VMs (and, drained, loses its `recreate` VMs)  operators
    /warmvm/host/HOST/alive     the host's presence, on its agent's lease (the only key with a TTL)
    /warmvm/host/HOST/info      its labels, capacity and how to reach it
    /warmvm/status/HOST/VM      a VM's status as its host reports it           written by that host

Each host's keys are under /warmvm/host/HOST/ and /warmvm/status/HOST/, so that etcd's RBAC can
give each host write access to its own keys only (README, "Fleet").
"""

from __future__ import annotations

ROOT = "/warmvm/"
KINDS = {"Network": "network", "Image": "image", "VM": "vm"}  # a spec's kind -> its key segment


def spec(kind: str, name: str) -> str:
    return f"{ROOT}spec/{KINDS[kind]}/{name}"


def placement(vm: str) -> str:
    return f"{ROOT}placement/{vm}"


def alloc(host: str) -> str:
    return f"{ROOT}alloc/{host}"


def pending(vm: str) -> str:
    return f"{ROOT}pending/{vm}"


def placer() -> str:
    return f"{ROOT}placer"


def lost(host: str) -> str:
    return f"{ROOT}lost/{host}"


def cordon(host: str) -> str:
    return f"{ROOT}cordon/{host}"


def alive(host: str) -> str:
    return f"{ROOT}host/{host}/alive"


def info(host: str) -> str:
    return f"{ROOT}host/{host}/info"


def status(host: str, vm: str) -> str:
    return f"{ROOT}status/{host}/{vm}"


def status_prefix(host: str) -> str:
    return f"{ROOT}status/{host}/"


def parts(key: str) -> list[str]:
    """A key's segments below the root: /warmvm/spec/vm/a -> ["spec", "vm", "a"]."""
    return key.removeprefix(ROOT).split("/")
