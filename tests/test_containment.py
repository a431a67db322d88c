"""Guest containment: anti-spoofing rules in our bridge table, and isolateVMs (what guests reach of the
host: test_host_reach.py).

Pure tests first (the table's parser on recorded `nft -j` output, its text,
the planner on hand-made observed state), then the real thing in a network
namespace per test: warmvm reconciles a network whose two network-only VMs
hold TAPs, their leases written as a lease would be (a VM needs an image,
and a boot, to get one otherwise), and the test plays both guests the way
QEMU does, through the TAPs' own file descriptors, writing raw frames into
them and reading what the bridge delivers back. What reaches the host is
read from a packet socket on the bridge. A frame that should be dropped is
followed by one that passes on the same TAP: frames from one descriptor are
bridged in order, so once the second is seen the first would have been too.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.netlink.rtnl import dump_links
from controller.base.model import Policy
from controller.engine.plan import plan
from controller.network.firewall import SHAPE, Guest, Ruleset, parse_table, render
from controller.network.hostfilter import HostRules
from controller.network.nfttable import parse_tables
from controller.network.state import FirewallState
from controller.specs.load import load

from .support.cli import REPO, instance, network_spec, reconcile, vm_spec, warmvm, write
from .support.plancase import INSTANCE, Files, observed_from

TABLE = f"warmvm-{INSTANCE}"

# `nft -j list table bridge warmvm-deadbeef` (nftables 1.0.6, kernel 6.18) of a table written by `render`
RECORDED = """{"nftables":[{"metainfo":{"version":"1.0.6","release_name":"Lester Gooch #5","json_schema_version":1}},
{"table":{"family":"bridge","name":"warmvm-deadbeef","handle":2}},
{"set":{"family":"bridge","name":"dropped","table":"warmvm-deadbeef","type":"ifname","handle":3,
 "elem":["tap-pool-1","tap-pool-2"]}},
{"set":{"family":"bridge","name":"guests","table":"warmvm-deadbeef","type":"ifname","handle":4,
 "elem":["tap-pool-0","tap-pool-3"]}},
{"set":{"family":"bridge","name":"guest_mac","table":"warmvm-deadbeef","type":["ifname","ether_addr"],"handle":5,
 "elem":[{"concat":["tap-pool-0","52:54:00:aa:bb:cc"]},{"concat":["tap-pool-3","52:54:00:aa:bb:cd"]}]}},
{"set":{"family":"bridge","name":"guest_ip","table":"warmvm-deadbeef","type":["ifname","ipv4_addr"],"handle":6,
 "elem":[{"concat":["tap-pool-0","10.88.0.2"]},{"concat":["tap-pool-3","10.88.0.3"]}]}},
{"chain":{"family":"bridge","table":"warmvm-deadbeef","name":"prerouting","handle":1,"type":"filter",
 "hook":"prerouting","prio":-200,"policy":"accept"}},
{"chain":{"family":"bridge","table":"warmvm-deadbeef","name":"guest","handle":2}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"prerouting","handle":7,
 "comment":"wv1: ports without a guest identity send nothing","expr":[{"match":{"op":"==",
 "left":{"meta":{"key":"iifname"}},"right":"@dropped"}},{"drop":null}]}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"prerouting","handle":8,
 "comment":"wv1: guests are checked","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},
 "right":"@guests"}},{"jump":{"target":"guest"}}]}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"guest","handle":9,"comment":"wv1: the guest's own MAC only",
 "expr":[{"match":{"op":"!=","left":{"concat":[{"meta":{"key":"iifname"}},{"payload":{"protocol":"ether",
 "field":"saddr"}}]},"right":"@guest_mac"}},{"drop":null}]}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"guest","handle":11,"comment":"wv1: IPv4 and ARP only",
 "expr":[{"match":{"op":"!=","left":{"payload":{"protocol":"ether","field":"type"}},"right":{"set":["ip","arp"]}}},
 {"drop":null}]}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"guest","handle":12,
 "comment":"wv1: the guest's own IPv4 address only","expr":[{"match":{"op":"!=","left":{"concat":[{"meta":{"key":
 "iifname"}},{"payload":{"protocol":"ip","field":"saddr"}}]},"right":"@guest_ip"}},{"drop":null}]}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"guest","handle":14,"comment":"wv1: Ethernet/IPv4 ARP only",
 "expr":[{"match":{"op":"!=","left":{"concat":[{"payload":{"protocol":"arp","field":"htype"}},{"payload":{"protocol":
 "arp","field":"ptype"}},{"payload":{"protocol":"arp","field":"hlen"}},{"payload":{"protocol":"arp","field":"plen"}}]},
 "right":{"set":[{"concat":[1,"ip",6,4]}]}}},{"drop":null}]}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"guest","handle":15,
 "comment":"wv1: ARP sender MAC is the guest's","expr":[{"match":{"op":"!=","left":{"concat":[{"meta":{"key":
 "iifname"}},{"payload":{"protocol":"arp","field":"saddr ether"}}]},"right":"@guest_mac"}},{"drop":null}]}},
{"rule":{"family":"bridge","table":"warmvm-deadbeef","chain":"guest","handle":16,
 "comment":"wv1: ARP sender IP is the guest's","expr":[{"match":{"op":"!=","left":{"concat":[{"meta":{"key":
 "iifname"}},{"payload":{"protocol":"arp","field":"saddr ip"}}]},"right":"@guest_ip"}},{"drop":null}]}}]}"""

RECORDED_RULES = Ruleset(frozenset({"tap-pool-1", "tap-pool-2"}),
                         frozenset({Guest("tap-pool-0", "52:54:00:aa:bb:cc", "10.88.0.2"),
                                    Guest("tap-pool-3", "52:54:00:aa:bb:cd", "10.88.0.3")}))


# --- the table as data -----------------------------------------------------------------------------------

def test_recorded_table_parses_to_the_ruleset_it_was_written_from() -> None:
    parsed = parse_table(RECORDED)
    assert parsed == RECORDED_RULES and parsed.shape == SHAPE


def _edited(edit: Callable[[list[dict[str, Any]]], None]) -> Ruleset:
    data = json.loads(RECORDED)
    edit(data["nftables"])
    return parse_table(json.dumps(data))


def test_a_missing_rule_an_extra_rule_or_a_second_identity_reads_as_drift() -> None:
    def drop_rule(items: list[dict[str, Any]]) -> None:
        items.pop(next(i for i, x in enumerate(items) if "rule" in x and "MAC" in x["rule"]["comment"]))

    def add_rule(items: list[dict[str, Any]]) -> None:
        items.append({"rule": {"chain": "prerouting", "comment": None, "expr": [{"accept": None}]}})

    def second_mac(items: list[dict[str, Any]]) -> None:
        mac = next(x["set"] for x in items if x.get("set", {}).get("name") == "guest_mac")
        mac["elem"].append({"concat": ["tap-pool-0", "52:54:00:00:00:66"]})

    def unset_policy(items: list[dict[str, Any]]) -> None:
        next(x["chain"] for x in items if "chain" in x and x["chain"]["name"] == "prerouting")["hook"] = "input"

    for edit in (drop_rule, add_rule, second_mac, unset_policy):
        assert _edited(edit) != RECORDED_RULES, edit.__name__


def test_output_of_another_form_is_a_value_error_for_the_observer_to_report() -> None:
    for text in ("not json", '{"nftables": 3}', '{"nftables": [{"set": {"name": "dropped"}}]}',
                 '{"nftables": [{"chain": {}}]}'):
        with pytest.raises(ValueError):
            parse_table(text)
    with pytest.raises(ValueError):
        parse_tables('{"nftables": [{"table": {}}]}')


def test_table_names_are_listed_from_json() -> None:
    text = ('{"nftables": [{"metainfo": {"version": "1.0.6"}},'
            ' {"table": {"family": "bridge", "name": "warmvm-1234abcd"}},'
            ' {"table": {"family": "bridge", "name": "filter"}}]}')
    assert parse_tables(text) == {("bridge", "warmvm-1234abcd"), ("bridge", "filter")}


def test_names_nft_text_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError):
        render(TABLE, Ruleset(frozenset({'tap"; flush ruleset'})), HostRules())
    with pytest.raises(ValueError):
        render(TABLE, Ruleset(guests=frozenset({Guest("tap-pool-0", "52:54:00:aa:bb:cc; drop", "10.88.0.2")})),
               HostRules())
    script = render(TABLE, RECORDED_RULES, HostRules())
    assert script.startswith(f"table bridge {TABLE}\ndelete table bridge {TABLE}\n")  # one replace transaction
    assert '"tap-pool-0" . 52:54:00:aa:bb:cc' in script and '"tap-pool-3" . 10.88.0.3' in script


# --- planning (observed state by hand, as in tests/plan/, plus the firewall fact) --------------------------

NET = "apiVersion: warmvm/v1\nkind: Network\nmetadata: {name: default}\nspec: {bridge: wvbr0, cidr: 10.88.0.0/24, " \
      "tapPool: {size: 1}%s}\n"
IMAGE = "---\napiVersion: warmvm/v1\nkind: Image\nmetadata: {name: demo}\nspec: {kernel: vmlinuz, " \
        "rootfs: rootfs.ext4, workSeed: none, default: true}\n"
FILES = {"vmlinuz": "kernel", "rootfs.ext4": {"ext4": ["/root"]}}
VM_A = "---\napiVersion: warmvm/v1\nkind: VM\nmetadata: {name: vm-a}\nspec: {}\n"
BRIDGE = {"name": "wvbr0", "kind": "bridge", "alias": f"warmvm:{INSTANCE}:bridge:default"}
GATEWAY = [{"dev": "wvbr0", "cidr": "10.88.0.1/24"}]
MAC_A = "52:54:00:00:00:01"  # what the case reader records as every VM's MAC


def pool(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "tun", "alias": f"warmvm:{INSTANCE}:pool:default", "master": "wvbr0", **extra}


def held(name: str, vm: str) -> dict[str, Any]:
    return {"name": name, "kind": "tun", "alias": f"warmvm:{INSTANCE}:vm:default:{vm}", "master": "wvbr0"}


def planned(tmp_path: Path, specs: str, observed: dict[str, Any], firewall: FirewallState | None,
            valid: bool = True) -> tuple[list[str], list[str], list[str]]:
    """(actions, held back, problems) as `describe` lines, firewall given as a fact of its own."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    if specs:
        (root / "specs.yaml").write_text(specs)
    if not valid:
        (root / "broken.yaml").write_text("apiVersion: warmvm/v1\nkind: Nope\n")
    desired = replace(load(root, Files(root, FILES)), policy=Policy())
    bridged = any(link["name"] == "wvbr0" for link in observed["links"])
    images = {"demo": {"inputs": None, "seeds": {}, "failed": {}}} if "kind: Image" in specs else {}
    base = {"images": images, "disks": {}, "vms": {}, "trash": [],
            "clone_method": "qcow2", "now": 0, "addresses": GATEWAY if bridged else [], **observed}
    obs = observed_from(base, desired.vms)
    obs = replace(obs, net=replace(obs.net, firewall=firewall))
    result = plan(desired, obs)
    return ([a.describe() for a in result.actions], [a.describe() for a in result.held_back], list(result.problems))


CONTAINED = HostRules(frozenset({"wvbr0"}))  # the host's rules for wvbr0, with nothing open
SYNCED = f"host={CONTAINED}"  # how a sync shows them


def installed(rules: Ruleset | None) -> FirewallState:
    """Both tables as `rules` and CONTAINED, or neither."""
    return FirewallState(TABLE, rules is not None, rules, host=CONTAINED if rules is not None else None)


def test_converged_host_with_its_rules_installed_plans_nothing(tmp_path: Path) -> None:
    rules = Ruleset(frozenset({"tap-pool-1"}), frozenset({Guest("tap-pool-0", MAC_A, "10.88.0.2")}))
    observed = {"links": [BRIDGE, pool("tap-pool-1"), held("tap-pool-0", "vm-a")],
                "vms": {"vm-a": {"network": "default", "ip": "10.88.0.2", "alive": True, "ready": True, "pid": 7,
                                 "spec": "current"}}}
    actions, _, problems = planned(tmp_path, NET % "" + VM_A, observed, installed(rules))
    assert actions == [] and problems == []
    # the same host without the table, or with the guest's identity gone from it: one sync, first
    for drifted in (None, Ruleset(frozenset({"tap-pool-1", "tap-pool-0"}))):
        actions, _, _ = planned(tmp_path, NET % "" + VM_A, observed, installed(drifted))
        assert actions == [f"firewall_sync firewall/{TABLE} table={TABLE} "
                           f"rules=guests[tap-pool-0={MAC_A}/10.88.0.2] drop[tap-pool-1] {SYNCED}"]


def test_new_vm_takes_its_tap_only_once_its_lease_is_observed_and_the_sync_comes_first(tmp_path: Path) -> None:
    specs = NET % "" + IMAGE + VM_A
    observed = {"links": [BRIDGE, pool("tap-pool-0")]}
    empty = installed(Ruleset(frozenset({"tap-pool-0"})))
    first, _, _ = planned(tmp_path, specs, observed, empty)
    kinds = [line.split()[0] for line in first]
    assert "ip_assign" in kinds and "tap_claim" not in kinds and "vm_start" not in kinds, first
    leased = {**observed, "vms": {"vm-a": {"network": "default", "ip": "10.88.0.2", "alive": False}}}
    second, _, _ = planned(tmp_path, specs, leased, empty)
    kinds = [line.split()[0] for line in second]
    assert kinds[0] == "firewall_sync" and kinds.index("tap_claim") < kinds.index("vm_start"), second
    assert f"guests[tap-pool-0={MAC_A}/10.88.0.2] drop[]" in second[0]


def test_without_containment_observed_a_new_vm_claims_at_once_as_before(tmp_path: Path) -> None:
    actions, _, _ = planned(tmp_path, NET % "" + IMAGE + VM_A, {"links": [BRIDGE, pool("tap-pool-0")]}, None)
    assert any(a.startswith("tap_claim vm/vm-a") for a in actions)


def test_a_tap_without_a_lease_on_its_network_sends_nothing(tmp_path: Path) -> None:
    observed = {"links": [BRIDGE, held("tap-pool-0", "vm-a")],  # a network-only VM: no lease
                "vms": {"vm-b": {"network": "other", "ip": "10.88.0.9", "alive": False}}}
    actions, _, _ = planned(tmp_path, NET % "" + VM_A, observed, installed(None))
    assert f"firewall_sync firewall/{TABLE} table={TABLE} rules=guests[] drop[tap-pool-0] {SYNCED}" in actions


def test_a_vm_whose_record_cannot_be_read_keeps_the_identity_installed_for_it(tmp_path: Path) -> None:
    rules = Ruleset(guests=frozenset({Guest("tap-pool-0", MAC_A, "10.88.0.2")}))
    observed = {"links": [BRIDGE, held("tap-pool-0", "vm-a")], "broken": {"vm/vm-a": "vm.json: not JSON"}}
    actions, _, _ = planned(tmp_path, NET % "" + IMAGE + VM_A, observed, installed(rules))
    assert not any(a.startswith("firewall") for a in actions)


def test_the_table_goes_with_the_last_tap_but_not_while_specs_are_invalid(tmp_path: Path) -> None:
    delete = f"firewall_delete firewall/{TABLE} table={TABLE}"
    actions, _, _ = planned(tmp_path, "", {"links": []}, installed(Ruleset()))
    assert actions == [delete]
    actions, held_back, _ = planned(tmp_path, "", {"links": []}, installed(Ruleset()), valid=False)
    assert actions == [] and held_back == [delete]
    actions, _, _ = planned(tmp_path, "", {"links": []}, installed(None))
    assert actions == []


def test_nft_that_cannot_be_asked_is_one_problem_and_nothing_else(tmp_path: Path) -> None:
    broken = FirewallState(TABLE, False, None, error="nft is not installed (Debian package nftables)")
    observed = {"links": [BRIDGE, pool("tap-pool-0")]}
    actions, _, problems = planned(tmp_path, NET % "", observed, broken)
    assert problems == [f"firewall/{TABLE}: nft is not installed (Debian package nftables); guests are not contained"]
    assert not any(a.startswith("firewall") for a in actions)
    _, _, problems = planned(tmp_path, "", {"links": []}, broken)  # nothing to contain: nothing to say
    assert problems == []


# --- the kernel: guests played through their TAPs --------------------------------------------------------

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
ETH_P_ALL, ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0003, 0x0800, 0x0806, 0x86DD
PACKET_OUTGOING = 4
BROADCAST = b"\xff" * 6
GW = "10.88.0.1"
A = ("vm-a", "52:54:00:0a:0a:0a", "10.88.0.10")
B = ("vm-b", "52:54:00:0b:0b:0b", "10.88.0.11")


# a well-formed IPv6 packet (fe80::a -> fe80::1, no next header, 8 bytes of payload), sent unicast: a malformed
# or multicast one could be dropped by the bridge's multicast snooping rather than by our rules
IPV6_NO_NEXT_HEADER = (struct.pack("!IHBB", 6 << 28, 8, 59, 64) + bytes.fromhex("fe80" + "0" * 27 + "a")
                       + bytes.fromhex("fe80" + "0" * 27 + "1") + b"warmvm:)")


def odd_arp() -> bytes:
    """An ARP with 8-byte hardware addresses, laid out so that where an Ethernet ARP has its sender MAC
    and IP it holds A's (all a rule reading fixed offsets checks), while by its own layout its sender
    IP is another (10.88.0.10's last half, then B's)."""
    head = struct.pack("!HHBBH", 1, ETH_P_IP, 8, 4, 1)
    return head + mac(A[1]) + ip4(A[2]) + ip4(B[2])[2:] + b"\0" * 8 + ip4(GW)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip4(text: str) -> bytes:
    return IPv4Address(text).packed


def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(dst: bytes, src: str, ethertype: int, payload: bytes) -> bytes:
    return dst + mac(src) + struct.pack("!H", ethertype) + payload


def arp_request(src_mac: str, src_ip: str, target_ip: str, frame_src: str | None = None) -> bytes:
    """Who has `target_ip`, from the sender `src_mac`/`src_ip` (in a frame from `frame_src`, default the sender)."""
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac(src_mac) + ip4(src_ip) + b"\0" * 6 + ip4(target_ip)
    return ether(BROADCAST, frame_src or src_mac, ETH_P_ARP, body)


def echo(dst_mac: bytes, src_mac: str, src_ip: str, dst_ip: str, ident: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"warmvm"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0, ip4(src_ip), ip4(dst_ip))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return ether(dst_mac, src_mac, ETH_P_IP, header + icmp)


def is_arp(frame: bytes, op: int, sender_ip: str | None = None, target_ip: str | None = None) -> bool:
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return False
    return (struct.unpack_from("!H", frame, 20)[0] == op and (sender_ip is None or frame[28:32] == ip4(sender_ip))
            and (target_ip is None or frame[38:42] == ip4(target_ip)))


def icmp_of(frame: bytes, icmp_type: int, ident: int) -> bool:
    return (len(frame) >= 42 and struct.unpack_from("!H", frame, 12)[0] == ETH_P_IP and frame[23] == 1
            and frame[34] == icmp_type and struct.unpack_from("!H", frame, 38)[0] == ident)


class Port:
    """A descriptor that reads and writes frames: a guest on its TAP, or the host on its bridge."""

    def __init__(self, fd: int, read: Callable[[], bytes | None]) -> None:
        self.fd, self._read = fd, read

    def send(self, frame: bytes) -> None:
        os.write(self.fd, frame)

    def until(self, match: Callable[[bytes], bool], timeout: float = 3.0) -> list[bytes]:
        """The frames read up to the first that matches, which ends the list (within `timeout`)."""
        before: list[bytes] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], left)[0]:
                continue
            frame = self._read()
            if frame is None:
                continue
            before.append(frame)
            if match(frame):
                return before
        raise AssertionError(f"no matching frame within {timeout}s ({len(before)} others)")


@contextmanager
def guest(tap: str) -> Iterator[Port]:
    """Attach to the TAP as QEMU does (its carrier comes up: the bridge forwards to and from it)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", tap.encode(), IFF_TAP | IFF_NO_PI))
        yield Port(fd, lambda: os.read(fd, 65536))
    finally:
        os.close(fd)


@contextmanager
def host(bridge: str) -> Iterator[Port]:
    """Every frame that reaches the host through the bridge (outgoing ones are skipped)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((bridge, 0))
    sock.setblocking(False)

    def read() -> bytes | None:
        frame, address = sock.recvfrom(65536)
        return None if address[2] == PACKET_OUTGOING else frame

    try:
        yield Port(sock.fileno(), read)
    finally:
        sock.close()


def gateway_mac(port: Port, who: tuple[str, str, str]) -> bytes:
    """ARP for the gateway as the guest would; the reply names the bridge's MAC. Asked again while the
    port comes up (its carrier follows our descriptor)."""
    deadline = time.monotonic() + 5
    while True:
        port.send(arp_request(who[1], who[2], GW))
        try:
            return port.until(lambda f: is_arp(f, 2, GW, who[2]), timeout=0.2)[-1][22:28]
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def lease(state: Path, who: tuple[str, str, str], network: str = "default") -> None:
    """The record a lease writes (state/vms/VM/vm.json): the identity a guest's rules follow."""
    directory = state / "vms" / who[0]
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "vm.json").write_text(json.dumps({"network": network, "ip": who[2], "mac": who[1],
                                                   "created": time.time()}))


def vm_taps(state: Path) -> dict[str, str]:
    """VM -> the TAP it holds."""
    prefix = f"warmvm:{instance(state)}:vm:default:"
    return {link.alias.removeprefix(prefix): link.name for link in dump_links()
            if link.alias and link.alias.startswith(prefix)}


def two_guests(specs: Path, state: Path, isolate: bool = False) -> dict[str, str]:
    """A network with a warm TAP and two VMs holding theirs, each with its lease."""
    text = network_spec(size=1) + ("  isolateVMs: true\n" if isolate else "")
    write(specs / "net.yaml", text)
    write(specs / "vms.yaml", vm_spec(A[0]) + "---\n" + vm_spec(B[0]))
    reconcile(specs, state)  # the state directory and its identity exist from here
    lease(state, A)
    lease(state, B)
    out = reconcile(specs, state).stderr
    assert "firewall_sync" in out
    taps = vm_taps(state)
    assert set(taps) == {A[0], B[0]}
    return taps


def nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=True).stdout


def test_a_guest_sends_only_as_itself(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    taps = two_guests(specs, state)
    table = f"warmvm-{instance(state)}"
    with guest(taps[A[0]]) as a, host("wvbr0") as gw:
        gw_mac = gateway_mac(a, A)
        # its own identity reaches the host (which answers no ping: test_host_reach.py)
        a.send(echo(gw_mac, A[1], A[2], GW, ident=1))
        gw.until(lambda f: icmp_of(f, 8, 1))
        marker = echo(gw_mac, A[1], A[2], GW, ident=99)
        spoofs: dict[str, tuple[bytes, Callable[[bytes], bool]]] = {  # the frame, and how it shows if it passes
            "another guest's IP": (echo(gw_mac, A[1], B[2], GW, ident=2), lambda f: icmp_of(f, 8, 2)),
            "another guest's MAC": (echo(gw_mac, B[1], A[2], GW, ident=3), lambda f: icmp_of(f, 8, 3)),
            "a made-up MAC": (echo(gw_mac, "52:54:00:66:66:66", A[2], GW, ident=4), lambda f: icmp_of(f, 8, 4)),
            "an ARP claiming another guest's IP": (arp_request(A[1], B[2], GW), lambda f: is_arp(f, 1, B[2], GW)),
            "an ARP naming another guest's MAC": (arp_request(B[1], A[2], GW, frame_src=A[1]),
                                                  lambda f: is_arp(f, 1, A[2], GW) and f[22:28] == mac(B[1])),
            "an ARP of another layout": (ether(BROADCAST, A[1], ETH_P_ARP, odd_arp()), lambda f: f[12:14] == b"\x08\x06"
                                         and f[18] == 8),
            "IPv6": (ether(gw_mac, A[1], ETH_P_IPV6, IPV6_NO_NEXT_HEADER),
                     lambda f: f[12:14] == b"\x86\xdd" and f[6:12] == mac(A[1])),
            "a VLAN tag": (ether(gw_mac, A[1], 0x8100, b"\0\x01\x08\x00" + echo(gw_mac, A[1], A[2], GW, 5)[14:]),
                           lambda f: icmp_of(f, 8, 5) or f[12:14] == b"\x81\x00"),
        }
        for what, (frame, arrived) in spoofs.items():
            a.send(frame)
            a.send(marker)
            seen = gw.until(lambda f: icmp_of(f, 8, 99))
            assert not any(arrived(f) for f in seen), f"{what} reached the host"
        # the oracle sees a spoof when nothing drops it: without our table, the first gets through
        nft("delete", "table", "bridge", table)
        frame, arrived = spoofs["another guest's IP"]
        a.send(frame)
        a.send(marker)
        assert any(arrived(f) for f in gw.until(lambda f: icmp_of(f, 8, 99)))
    assert "firewall_sync" in reconcile(specs, state).stderr  # the table is observed gone and put back
    assert table in nft("list", "tables", "bridge")


def test_an_idle_tap_sends_nothing(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    taps = two_guests(specs, state)
    prefix = f"warmvm:{instance(state)}:pool:default"
    idle = next(link.name for link in dump_links() if link.alias == prefix)
    with guest(idle) as rogue, guest(taps[A[0]]) as a, host("wvbr0") as gw:
        gw_mac = gateway_mac(a, A)
        rogue.send(echo(gw_mac, A[1], A[2], GW, ident=7))  # even with a valid identity
        a.send(echo(gw_mac, A[1], A[2], GW, ident=99))
        assert not any(icmp_of(f, 8, 7) for f in gw.until(lambda f: icmp_of(f, 8, 99)))


def test_isolated_guests_reach_the_gateway_but_not_each_other(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    taps = two_guests(specs, state, isolate=True)
    ours = {link.name: link for link in dump_links() if link.alias and instance(state) in link.alias
            and link.kind == "tun"}
    assert len(ours) == 3 and all(link.isolated for link in ours.values())  # the warm TAP too
    with guest(taps[A[0]]) as a, guest(taps[B[0]]) as b, host("wvbr0") as gw:
        gw_mac = gateway_mac(a, A)
        gateway_mac(b, B)
        a.send(arp_request(A[1], A[2], B[2]))  # who has B? a broadcast: the host sees it, B must not
        gw.until(lambda f: is_arp(f, 1, A[2], B[2]))
        a.send(echo(mac(B[1]), A[1], A[2], B[2], ident=11))  # unicast to B
        b.send(arp_request(B[1], B[2], GW))  # B's own question to the gateway: its answer comes after
        seen = b.until(lambda f: is_arp(f, 2, GW, B[2]))
        assert not any(is_arp(f, 1, A[2], B[2]) or icmp_of(f, 8, 11) for f in seen)
        a.send(echo(gw_mac, A[1], A[2], GW, ident=13))
        gw.until(lambda f: icmp_of(f, 8, 13))
    # the same guests without isolation do reach each other (the check above would have seen it)
    write(specs / "net.yaml", network_spec(size=1))
    assert "isolated=False" in reconcile(specs, state).stderr
    assert not any(link.isolated for link in dump_links())
    with guest(taps[A[0]]) as a, guest(taps[B[0]]) as b:
        gateway_mac(b, B)
        a.send(arp_request(A[1], A[2], B[2]))
        b.until(lambda f: is_arp(f, 1, A[2], B[2]))


def test_a_port_whose_isolation_drifted_is_isolated_again(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2) + "  isolateVMs: true\n")
    reconcile(specs, state)
    tap = next(link.name for link in dump_links() if link.kind == "tun")
    subprocess.run(["bridge", "link", "set", "dev", tap, "isolated", "off"], check=True)
    pending = warmvm(specs, state, "plan")
    assert pending.returncode == 2 and f"tap_attach tap/{tap}" in pending.stdout + pending.stderr
    reconcile(specs, state)
    assert all(link.isolated for link in dump_links() if link.kind == "tun")


def test_rules_in_place_plan_nothing_and_drift_is_put_back(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    taps = two_guests(specs, state)
    table = f"warmvm-{instance(state)}"
    again = reconcile(specs, state).stderr
    assert "0 applied" in again and "0 passes" in again
    assert warmvm(specs, state, "plan").returncode == 0
    nft("delete", "element", "bridge", table, "guests", f'{{ "{taps[A[0]]}" }}')
    pending = warmvm(specs, state, "plan")
    assert pending.returncode == 2 and f"firewall_sync firewall/{table}" in pending.stdout + pending.stderr
    reconcile(specs, state)
    assert taps[A[0]] in nft("list", "set", "bridge", table, "guests")


def test_another_instance_and_foreign_tables_are_left_alone(netns: str, tmp_path: Path) -> None:
    one, two = (tmp_path / "one" / "specs", tmp_path / "one" / "state"), (tmp_path / "two" / "specs",
                                                                           tmp_path / "two" / "state")
    write(one[0] / "net.yaml", network_spec(size=2))
    write(two[0] / "net.yaml", network_spec(bridge="wvbr1", cidr="10.89.0.0/24", size=2, prefix="tap-b-"))
    nft("add", "table", "bridge", "filter")
    nft("add", "chain", "bridge", "filter", "forward", "{ type filter hook forward priority 0; policy accept; }")
    nft("add", "rule", "bridge", "filter", "forward", "iifname", "tap-pool-0", "accept")
    nft("add", "table", "inet", "filter")
    nft("add", "chain", "inet", "filter", "input", "{ type filter hook input priority 0; policy accept; }")
    nft("add", "rule", "inet", "filter", "input", "iifname", "wvbr0", "accept")
    reconcile(*one)
    reconcile(*two)
    ours = {(family, f"warmvm-{instance(state)}") for family in ("bridge", "inet") for state in (one[1], two[1])}
    foreign = {("bridge", "filter"), ("inet", "filter")}
    assert parse_tables(nft("-j", "list", "tables")) == ours | foreign
    theirs = {family: nft("list", "table", family, f"warmvm-{instance(two[1])}") for family in ("bridge", "inet")}
    before = {family: nft("list", "table", family, "filter") for family in ("bridge", "inet")}
    assert "tap-b-" in theirs["bridge"] and "tap-pool-" not in theirs["bridge"]
    assert "wvbr1" in theirs["inet"] and "wvbr0" not in theirs["inet"]
    (one[0] / "net.yaml").unlink()
    out = reconcile(*one).stderr
    assert "firewall_delete" in out
    gone = {(family, f"warmvm-{instance(one[1])}") for family in ("bridge", "inet")}
    assert parse_tables(nft("-j", "list", "tables")) == (ours | foreign) - gone
    assert {family: nft("list", "table", family, f"warmvm-{instance(two[1])}") for family in ("bridge", "inet")} \
        == theirs
    assert {family: nft("list", "table", family, "filter") for family in ("bridge", "inet")} == before


def test_nft_missing_is_one_problem_line_not_a_traceback(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    code = ("import sys, controller.adapters.nft as nft; nft.SEARCH = '/nonexistent'; "
            "from controller.cli.main import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", code, "--specs", str(specs), "--state", str(state), "reconcile"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert problems == [f"problem: firewall/warmvm-{instance(state)}: nft is not installed "
                        "(Debian package nftables; hack/install-deps.sh); guests are not contained"]
