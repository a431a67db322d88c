"""Spec schemas: what one object's spec may say, and the checks on single values.

Pydantic models with extra fields forbidden (a misspelt field is an error,
not a silent default) and validators whose messages become the text of
FILE:LINE: FIELD: errors. Checks across objects live in load.py.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt
from pydantic.alias_generators import to_camel

from ..network.names import IFNAMSIZ

API_VERSION = "warmvm/v1"
BRIDGE_MAX_PORTS = 1023
MIN_INDEX_DIGITS = 4  # room for any pool index up to BRIDGE_MAX_PORTS
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_QUANTITY = re.compile(r"^\s*(\d+)\s*([KMGT]i)?\s*$")
MAX_QUANTITY = 64 << 40


def parse_quantity(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as 512Mi or 4Gi")
    if isinstance(value, int):
        number, unit = value, ""
    elif isinstance(value, str) and (m := _QUANTITY.match(value)):
        number, unit = int(m.group(1)), m.group(2) or ""
    else:
        raise ValueError(f"{value!r} is not a quantity: use a whole number with Ki, Mi, Gi or Ti (e.g. 4Gi)")
    size = number * _UNITS[unit]
    if size <= 0:
        raise ValueError("must be greater than zero")
    if size > MAX_QUANTITY:
        raise ValueError(f"{value} is absurdly large (at most 64Ti)")
    return size


def check_ifname(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an interface name")
    if len(value.encode()) > IFNAMSIZ:
        raise ValueError(f"{value!r} is longer than {IFNAMSIZ} bytes")
    if value in (".", "..") or any(c in value for c in "/:") or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a valid interface name (no '/', ':' or whitespace)")
    return value


def check_prefix(value: Any) -> str:
    check_ifname(value)
    room = IFNAMSIZ - len(value.encode())
    if room < MIN_INDEX_DIGITS:
        raise ValueError(f"{value!r} leaves {room} characters for the index; at least {MIN_INDEX_DIGITS} needed")
    return str(value)


def check_cidr(value: Any) -> IPv4Network:
    try:
        net = IPv4Network(value, strict=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{value!r} is not an IPv4 network ({e})") from None
    if net.num_addresses < 4:
        raise ValueError(f"{value} is too small for a gateway and VMs")
    return net


def check_ip(value: Any) -> IPv4Address:
    try:
        return IPv4Address(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not an IPv4 address") from None


IfName = Annotated[str, BeforeValidator(check_ifname)]
Quantity = Annotated[int, BeforeValidator(parse_quantity)]


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False)


class Metadata(Schema):
    name: str


class TapPoolSpec(Schema):
    size: StrictInt = Field(0, ge=0, le=BRIDGE_MAX_PORTS)
    prefix: Annotated[str, BeforeValidator(check_prefix)] = "tap-pool-"


class NetworkSpec(Schema):
    bridge: IfName
    cidr: Annotated[IPv4Network, BeforeValidator(check_cidr)]
    tap_pool: TapPoolSpec = TapPoolSpec.model_validate({})


class WorkSeedSpec(Schema):
    from_: str = Field(alias="from")
    size: Quantity | None = None


def _none_or_mapping(value: Any) -> Any:
    if value == "none":
        return None
    if not isinstance(value, dict):
        raise ValueError("must be `none` or a mapping with `from` (and optionally `size`)")
    return value


class ImageSpec(Schema):
    kernel: str
    initrd: str | None = None
    rootfs: str
    work_seed: Annotated[WorkSeedSpec | None, BeforeValidator(_none_or_mapping)] = \
        WorkSeedSpec.model_validate({"from": "rootfs:/root"})
    default: StrictBool = False


class VMSpec(Schema):
    network: str | None = None
    image: str | None = None
    disk_size: Quantity = 1 << 30
    vcpus: StrictInt = Field(1, ge=1, le=64)
    memory: Quantity = 256 << 20
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    running: StrictBool = True
    ip: Annotated[IPv4Address, BeforeValidator(check_ip)] | None = None


SCHEMAS: dict[str, type[Schema]] = {"Network": NetworkSpec, "Image": ImageSpec, "VM": VMSpec}
MIN_MEMORY, MAX_MEMORY = 64 << 20, 1 << 40
