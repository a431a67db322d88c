"""The dump parser on recorded kernel output (made in a throwaway namespace, see the names)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from controller.adapters.netlink.messages import NLM_F_DUMP_INTR, DumpInterrupted, parse_addresses, parse_links

DATA = Path(__file__).parent / "data"


def test_parses_names_kinds_aliases_masters_and_groups() -> None:
    links = {link.name: link for link in parse_links([(DATA / "linkdump.bin").read_bytes()])}
    assert set(links) == {"lo", "wvbr0", "tap-pool-0", "tap-pool-1", "veth-x", "veth-y"}
    bridge, tap = links["wvbr0"], links["tap-pool-0"]
    assert bridge.kind == "bridge" and bridge.alias == "warmvm:bridge:default" and bridge.up
    assert tap.kind == "tun" and tap.alias == "warmvm:pool:default" and tap.master == bridge.index
    assert links["tap-pool-1"].alias is None and links["tap-pool-1"].master is None
    assert links["veth-x"].group == 7 and links["veth-x"].kind == "veth"
    assert links["lo"].kind is None


def test_parses_ipv4_addresses() -> None:
    links = {link.name: link for link in parse_links([(DATA / "linkdump.bin").read_bytes()])}
    addresses = {(a.index, a.cidr) for a in parse_addresses([(DATA / "addrdump.bin").read_bytes()])}
    assert (links["wvbr0"].index, "10.88.0.1/24") in addresses
    assert (links["lo"].index, "127.0.0.1/8") in addresses


def test_interrupted_dump_is_detected() -> None:
    data = bytearray((DATA / "linkdump.bin").read_bytes())
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", data)
    struct.pack_into("=IHHII", data, 0, length, mtype, flags | NLM_F_DUMP_INTR, seq, pid)
    with pytest.raises(DumpInterrupted):
        list(parse_links([bytes(data)]))
