"""Reads the fleet from the store: one range read of /warmvm/, parsed by state.fleet_from."""

from __future__ import annotations

from ..adapters.etcd import Etcd
from . import keys
from .state import Fleet, fleet_from


def read_fleet(etcd: Etcd) -> Fleet:
    items, revision = etcd.range(keys.ROOT)
    return fleet_from([(i.key, i.value, i.mod_revision) for i in items], revision)
