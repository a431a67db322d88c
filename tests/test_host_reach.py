"""What guests reach of the host: our inet table as data, then as nft writes it and warmvm keeps it.

Pure tests first (the table's parser on recorded `nft -j` output, its text),
then real nft in a network namespace per test: the table read back as it
was written, an install from before the table existed upgraded by the next
pass, and forwarding turned on for egress. The planning is in tests/plan/
(host_ports_*, egress_*); what a real guest meets, in test_host_reach_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.base.kinds import Transport
from controller.base.model import HostPort
from controller.network.firewall import Ruleset, render, render_delete
from controller.network.hostfilter import SHAPE, Allowed, HostRules, parse_host_table
from controller.network.nfttable import parse_tables

from .support.cli import instance, network_spec, reconcile, warmvm, write

TABLE = "warmvm-deadbeef"

# `nft -j list table inet warmvm-deadbeef` (nftables 1.0.6, kernel 6.18) of a table written by `render`,
# each rule's `expr` and every `handle` left out (the parser reads neither)
RECORDED = """{"nftables": [
{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "warmvm-deadbeef"}},
{"set": {"family": "inet", "name": "allowed", "table": "warmvm-deadbeef", "type": ["ifname", "ipv4_addr", "inet_proto",
 "inet_service"], "elem": [{"concat": ["wvbr0", "10.88.0.1", "udp", 53]}, {"concat": ["wvbr0", "10.88.0.1", "tcp", 3128]}]}},
{"set": {"family": "inet", "name": "bridges", "table": "warmvm-deadbeef", "type": "ifname", "elem": ["wvbr0", "wvbr1"]}},
{"set": {"family": "inet", "name": "egress", "table": "warmvm-deadbeef", "type": "ifname", "elem": ["wvbr1"]}},
{"set": {"family": "inet", "name": "within", "table": "warmvm-deadbeef", "type": ["ifname", "ifname"],
 "elem": [{"concat": ["wvbr0", "wvbr0"]}, {"concat": ["wvbr1", "wvbr1"]}]}},
{"chain": {"family": "inet", "table": "warmvm-deadbeef", "name": "input", "type": "filter", "hook": "input", "prio": 0,
 "policy": "accept"}},
{"chain": {"family": "inet", "table": "warmvm-deadbeef", "name": "forward", "type": "filter", "hook": "forward",
 "prio": 0, "policy": "accept"}},
{"chain": {"family": "inet", "table": "warmvm-deadbeef", "name": "postrouting", "type": "nat", "hook": "postrouting",
 "prio": 100, "policy": "accept"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "input",
 "comment": "wv1: replies to the host's own connections"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "input",
 "comment": "wv1: the ports a network opens on its gateway"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "input", "comment": "wv1: nothing else of the host"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "forward",
 "comment": "wv1: replies to connections made to guests"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "forward",
 "comment": "wv1: egress out of the host's other interfaces"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "forward",
 "comment": "wv1: bridged between the guests of one network"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "forward", "comment": "wv1: no other network"}},
{"rule": {"family": "inet", "table": "warmvm-deadbeef", "chain": "postrouting",
 "comment": "wv1: egress leaves with the host's address"}}]}"""

RECORDED_RULES = HostRules(
    frozenset({"wvbr0", "wvbr1"}),
    frozenset({Allowed("wvbr0", "10.88.0.1", HostPort(Transport.UDP, 53)),
               Allowed("wvbr0", "10.88.0.1", HostPort(Transport.TCP, 3128))}),
    frozenset({"wvbr1"}))


# --- the table as data -----------------------------------------------------------------------------------

def test_recorded_host_table_parses_to_the_rules_it_was_written_from() -> None:
    parsed = parse_host_table(RECORDED)
    assert parsed == RECORDED_RULES and parsed.shape == SHAPE


def _edited(edit: Callable[[list[dict[str, Any]]], None]) -> HostRules:
    data = json.loads(RECORDED)
    edit(data["nftables"])
    return parse_host_table(json.dumps(data))


def test_a_missing_rule_an_altered_chain_or_an_element_of_another_form_reads_as_drift() -> None:
    def drop_rule(items: list[dict[str, Any]]) -> None:
        items.pop(next(i for i, x in enumerate(items) if "rule" in x and "nothing else" in x["rule"]["comment"]))

    def add_rule(items: list[dict[str, Any]]) -> None:
        items.append({"rule": {"chain": "input", "comment": None}})

    def policy_drop(items: list[dict[str, Any]]) -> None:
        next(x["chain"] for x in items if "chain" in x and x["chain"]["name"] == "forward")["policy"] = "drop"

    def port_by_name(items: list[dict[str, Any]]) -> None:
        allowed = next(x["set"] for x in items if x.get("set", {}).get("name") == "allowed")
        allowed["elem"].append({"concat": ["wvbr0", "10.88.0.1", "tcp", "ssh"]})

    def another_bridge(items: list[dict[str, Any]]) -> None:
        next(x["set"] for x in items if x.get("set", {}).get("name") == "bridges")["elem"].remove("wvbr1")

    for edit in (drop_rule, add_rule, policy_drop, port_by_name, another_bridge):
        assert _edited(edit) != RECORDED_RULES, edit.__name__


def test_the_sync_replaces_both_tables_in_one_script_and_the_delete_removes_both() -> None:
    script = render(TABLE, Ruleset(frozenset({"tap-pool-0"})), RECORDED_RULES)
    lines = script.splitlines()
    bridge, inet = lines.index(f"table bridge {TABLE} {{"), lines.index(f"table inet {TABLE} {{")
    assert lines[bridge - 2:bridge] == [f"table bridge {TABLE}", f"delete table bridge {TABLE}"]
    assert lines[inet - 2:inet] == [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    assert '"wvbr0" . 10.88.0.1 . udp . 53' in script and 'set egress { type ifname; elements = { "wvbr1" } }' in script
    assert render_delete(TABLE) == (f"table bridge {TABLE}\ndelete table bridge {TABLE}\n"
                                    f"table inet {TABLE}\ndelete table inet {TABLE}\n")


def test_names_and_rules_nft_text_cannot_hold_are_refused() -> None:
    port = HostPort(Transport.TCP, 22)
    for bad in (HostRules(frozenset({'br"; flush ruleset'})),
                HostRules(frozenset({"wvbr0"}), egress=frozenset({"wvbr1"})),  # egress of a bridge not contained
                HostRules(frozenset({"wvbr0"}), frozenset({Allowed("wvbr1", "10.89.0.1", port)})),
                HostRules(frozenset({"wvbr0"}), frozenset({Allowed("wvbr0", "10.88.0.1; accept", port)}))):
        with pytest.raises(ValueError):
            render(TABLE, Ruleset(), bad)


# --- the kernel: real nft in a private namespace --------------------------------------------------------

def nft(*args: str, script: str | None = None) -> str:
    return subprocess.run(["nft", *args], input=script, capture_output=True, text=True, check=True).stdout


def test_the_host_table_reads_back_as_it_was_written(netns: str) -> None:
    nft("-f", "-", script=render(TABLE, Ruleset(), RECORDED_RULES))
    parsed = parse_host_table(nft("-j", "list", "table", "inet", TABLE))
    assert parsed == RECORDED_RULES and parsed.shape == SHAPE
    nft("-f", "-", script=render_delete(TABLE))
    assert parse_tables(nft("-j", "list", "tables")) == frozenset()


def test_an_install_with_only_the_bridge_table_is_upgraded_by_the_next_pass(netns: str,
                                                                             workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1) + "  hostPorts: [53/udp]\n")
    reconcile(specs, state)
    table = f"warmvm-{instance(state)}"
    nft("delete", "table", "inet", table)  # what a warmvm from before the host's rules left: the bridge table
    pending = warmvm(specs, state, "plan")
    assert pending.returncode == 2 and f"firewall_sync firewall/{table}" in pending.stdout + pending.stderr
    bridge_before = nft("list", "table", "bridge", table)
    reconcile(specs, state)
    assert parse_tables(nft("-j", "list", "tables")) == {("bridge", table), ("inet", table)}
    assert nft("list", "table", "bridge", table) == bridge_before  # the guests' anti-spoofing, unchanged
    host = parse_host_table(nft("-j", "list", "table", "inet", table))
    assert host == HostRules(frozenset({"wvbr0"}), frozenset({Allowed("wvbr0", "10.88.0.1", HostPort(Transport.UDP,
                                                                                                       53))}))
    assert warmvm(specs, state, "plan").returncode == 0


def test_egress_turns_forwarding_on_and_leaving_it_never_turns_it_off(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    write(specs / "net.yaml", network_spec(size=1))
    assert "forwarding_enable" not in reconcile(specs, state).stderr
    assert forwarding.read_text().strip() == "0"  # a new namespace's default, left as it is
    write(specs / "net.yaml", network_spec(size=1) + "  egress: nat\n")
    out = reconcile(specs, state).stderr
    assert out.index("firewall_sync") < out.index("forwarding_enable")  # the forward rules first
    assert forwarding.read_text().strip() == "1"
    assert warmvm(specs, state, "plan").returncode == 0
    forwarding.write_text("0")  # turned off behind our back: on again
    assert "forwarding_enable" in reconcile(specs, state).stderr and forwarding.read_text().strip() == "1"
    write(specs / "net.yaml", network_spec(size=1))
    assert "forwarding_enable" not in reconcile(specs, state).stderr
    assert forwarding.read_text().strip() == "1"
