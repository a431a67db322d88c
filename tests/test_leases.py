"""IP leases: the lowest free host, never one leased to another VM, never the gateway."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from controller.base.kinds import Accel
from controller.base.model import VM, Network, Source
from controller.vms.plan import _lease

NET = Network(name="default", bridge="wvbr0", cidr=IPv4Network("10.88.0.0/29"), pool_size=0, pool_prefix="tap-pool-",
              source=Source("x", 1))


def vm(name: str, ip: str | None = None) -> VM:
    return VM(name=name, network="default", image="demo", disk_size=1 << 30, vcpus=1, memory=256 << 20,
              accel=Accel.AUTO, running=True, ip=IPv4Address(ip) if ip else None, source=Source("x", 1))


def test_lowest_free_host_skipping_the_gateway_and_existing_leases() -> None:
    leased = {("default", IPv4Address("10.88.0.2")): "a", ("default", IPv4Address("10.88.0.4")): "b"}
    assert _lease(vm("c"), NET, leased) == IPv4Address("10.88.0.3")


def test_a_requested_address_leased_to_another_vm_is_refused() -> None:
    leased = {("default", IPv4Address("10.88.0.5")): "a"}
    assert _lease(vm("c", "10.88.0.5"), NET, leased) is None
    assert _lease(vm("a", "10.88.0.5"), NET, leased) == IPv4Address("10.88.0.5")


def test_a_full_network_has_no_lease() -> None:
    leased = {("default", IPv4Address(f"10.88.0.{i}")): f"v{i}" for i in range(2, 7)}
    assert _lease(vm("z"), NET, leased) is None


def test_leases_of_other_networks_do_not_count(tmp_path: Path) -> None:
    leased = {("other", IPv4Address("10.88.0.2")): "a"}
    assert _lease(vm("c"), NET, leased) == IPv4Address("10.88.0.2")
