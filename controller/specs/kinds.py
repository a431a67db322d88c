"""The three kinds of spec, field by field: what a Network, an Image and a VM may say, with each
field's parser and default (the machinery is schema.py's)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ..base.kinds import Egress
from ..base.model import HostPort
from .schema import (
    BRIDGE_MAX_PORTS,
    Field,
    Items,
    Schema,
    boolean,
    check_cidr,
    check_ifname,
    check_ip,
    check_prefix,
    host_port,
    integer,
    labels,
    one_of,
    optional,
    parse_quantity,
    seconds,
    string,
)


@dataclass(frozen=True)
class Metadata:
    name: str


@dataclass(frozen=True)
class TapPoolSpec:
    size: int = 0
    prefix: str = "tap-pool-"


@dataclass(frozen=True)
class NetworkSpec:
    bridge: str
    cidr: IPv4Network
    tap_pool: TapPoolSpec
    isolate_vms: bool = False
    host_selector: dict[str, str] | None = None  # fleet mode: the hosts it applies to (all: None)
    host_ports: tuple[HostPort, ...] = ()  # what its guests may open on the host, at their gateway address
    egress: Egress = Egress.NONE  # nat: forwarded to other networks as the host


@dataclass(frozen=True)
class WorkSeedSpec:
    from_: str
    size: int | None = None


@dataclass(frozen=True)
class ImageSpec:
    kernel: str
    initrd: str | None
    rootfs: str
    work_seed: WorkSeedSpec | None
    default: bool
    host_selector: dict[str, str] | None = None  # fleet mode: the hosts it applies to (all: None)


@dataclass(frozen=True)
class VMSpec:
    network: str | None
    image: str | None
    disk_size: int
    vcpus: int
    memory: int
    accel: str
    running: bool
    ip: IPv4Address | None
    boot: str
    host_selector: dict[str, str] | None = None  # fleet mode: the hosts it may be placed on (any: None)
    on_host_loss: str = "wait"  # fleet mode: wait for its host, or recreate it elsewhere (a new VM)
    lost_after: float = 60.0  # fleet mode: seconds its host is lost before `recreate` places it anew
    suspended: bool = False  # its memory saved to its own file and QEMU gone; false again: resumed from it


def _none_or_mapping(value: Any) -> Any:
    if value == "none":
        return None
    if not isinstance(value, dict):
        raise ValueError("must be `none` or a mapping with `from` (and optionally `size`)")
    return value


METADATA = Schema(lambda **v: Metadata(v["name"]), (Field("name", string),))
TAP_POOL = Schema(lambda **v: TapPoolSpec(v["size"], v["prefix"]),
                  (Field("size", integer(0, BRIDGE_MAX_PORTS), 0), Field("prefix", check_prefix, "tap-pool-")))
SELECTOR = Field("hostSelector", optional(labels), None)  # fleet mode only; a host runs its own specs whole
NETWORK = Schema(lambda **v: NetworkSpec(v["bridge"], v["cidr"], v["tapPool"], v["isolateVMs"], v["hostSelector"],
                                         v["hostPorts"], Egress(v["egress"])),
                 (Field("bridge", check_ifname), Field("cidr", check_cidr),
                  Field("tapPool", TAP_POOL, TapPoolSpec()), Field("isolateVMs", boolean, False), SELECTOR,
                  Field("hostPorts", Items(host_port), ()), Field("egress", one_of(*map(str, Egress)), Egress.NONE)))
WORK_SEED = Schema(lambda **v: WorkSeedSpec(v["from"], v["size"]),
                   (Field("from", string), Field("size", optional(parse_quantity), None)), before=_none_or_mapping)
IMAGE = Schema(lambda **v: ImageSpec(v["kernel"], v["initrd"], v["rootfs"], v["workSeed"], v["default"],
                                     v["hostSelector"]),
               (Field("kernel", string), Field("initrd", optional(string), None), Field("rootfs", string),
                Field("workSeed", WORK_SEED, WorkSeedSpec("rootfs:/root")), Field("default", boolean, False),
                SELECTOR))
VM = Schema(lambda **v: VMSpec(v["network"], v["image"], v["diskSize"], v["vcpus"], v["memory"], v["accel"],
                               v["running"], v["ip"], v["boot"], v["hostSelector"], v["onHostLoss"], v["lostAfter"],
                               v["suspended"]),
            (Field("network", optional(string), None), Field("image", optional(string), None),
             Field("diskSize", parse_quantity, 1 << 30), Field("vcpus", integer(1, 64), 1),
             Field("memory", parse_quantity, 256 << 20), Field("accel", one_of("auto", "kvm", "tcg"), "auto"),
             Field("running", boolean, True), Field("ip", optional(check_ip), None),
             Field("boot", one_of("cold", "restore"), "cold"), SELECTOR,
             Field("onHostLoss", one_of("wait", "recreate"), "wait"), Field("lostAfter", seconds, 60.0),
             Field("suspended", boolean, False)))

SCHEMAS: dict[str, Schema[Any]] = {"Network": NETWORK, "Image": IMAGE, "VM": VM}
