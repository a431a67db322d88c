"""Spec loading: each kind of bad input gives one FILE:LINE: FIELD: line, valid objects survive."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.disks.observe import ImageFiles
from controller.specs.load import load

from .support.cli import network_spec, vm_spec, warmvm, write

NET = network_spec()

CASES = {
    "broken_yaml": ("apiVersion: warmvm/v1\nkind: Network\nmetadata: {name: [x\n",
                    r"net.yaml:3: invalid YAML"),
    "unknown_api_version": (NET.replace("warmvm/v1", "warmvm/v9"),
                            "net.yaml:1: apiVersion: must be 'warmvm/v1', got 'warmvm/v9'"),
    "unknown_kind": (NET.replace("kind: Network", "kind: Netwerk"),
                     "net.yaml:2: kind: unknown kind 'Netwerk'"),
    "misspelled_field": (NET.replace("tapPool:", "tapPol:"),
                         "net.yaml:8: spec.tapPol: unknown field (did you mean 'tapPool'?)"),
    "misspelled_nested_field": (NET.replace("size:", "sise:"),
                                "net.yaml:9: spec.tapPool.sise: unknown field (did you mean 'size'?)"),
    "wrong_type": (NET.replace("size: 3", "size: lots"),
                   "net.yaml:9: spec.tapPool.size: Input should be a valid integer"),
    "missing_name": (NET.replace("  name: default\n", "  labels: {}\n"),
                     "net.yaml:4: metadata.labels: unknown field"),
    "invalid_name": (NET.replace("name: default", "name: Not_Valid"),
                     "net.yaml:4: metadata.name: 'Not_Valid' is not a valid name"),
    "name_too_long": (NET.replace("name: default", "name: " + "a" * 64),
                      "net.yaml:4: metadata.name: '" + "a" * 64 + "' is not a valid name"),
    "bridge_too_long": (network_spec(bridge="wvbr-much-too-long"),
                        "net.yaml:6: spec.bridge: 'wvbr-much-too-long' is longer than 15 bytes"),
    "bridge_with_slash": (network_spec(bridge="wv/br"), "net.yaml:6: spec.bridge: 'wv/br' is not a valid interface name"),
    "prefix_without_room": (network_spec(prefix="tap-pool-long-"),
                            "net.yaml:10: spec.tapPool.prefix: 'tap-pool-long-' leaves 1 characters for the index"),
    "negative_pool": (network_spec(size=-1),
                      "net.yaml:9: spec.tapPool.size: Input should be greater than or equal to 0"),
    "pool_too_big_for_a_bridge": (network_spec(size=1024),
                                  "net.yaml:9: spec.tapPool.size: Input should be less than or equal to 1023"),
    "bad_cidr": (network_spec(cidr="10.88.0.1/24"), "net.yaml:7: spec.cidr: '10.88.0.1/24' is not an IPv4 network"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_naming_file_line_and_field(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    write(tmp_path / "specs" / "net.yaml", text)
    desired = load(tmp_path / "specs", ImageFiles())
    messages = [str(e) for e in desired.errors]
    assert any(expected in m for m in messages), messages
    assert all("\n" not in m for m in messages)


def test_cli_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write(specs / "net.yaml", NET.replace("size: 3", "size: lots"))
    result = warmvm(specs, tmp_path / "state", "plan")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].endswith("net.yaml:9: spec.tapPool.size: Input should be a valid integer")


def test_a_name_defined_twice_is_an_error_at_both_and_neither_is_applied(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", NET)
    write(tmp_path / "b" / "c.yml", NET.replace("10.88.0.0/24", "10.99.0.0/24"))
    desired = load(tmp_path, ImageFiles())
    errors = sorted(str(e) for e in desired.errors)
    assert len(errors) == 2, errors
    assert "a.yaml:4: metadata.name: Network 'default' is defined twice: here and at" in errors[0]
    assert errors[0].endswith("c.yml:1")
    assert "c.yml:4: metadata.name: Network 'default' is defined twice: here and at" in errors[1]
    assert errors[1].endswith("a.yaml:1")
    assert "default" not in desired.networks, "which file wins must not depend on file order"


def test_an_empty_spec_file_is_named_so_that_removals_wait(tmp_path: Path) -> None:
    write(tmp_path / "net.yaml", NET)
    (tmp_path / "vm.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# nothing here yet\n---\n")
    desired = load(tmp_path, ImageFiles())
    assert not desired.errors
    assert sorted(Path(f).name for f in desired.empty_files) == ["comments.yaml", "vm.yaml"]


def test_vm_naming_a_missing_network(tmp_path: Path) -> None:
    write(tmp_path / "net.yaml", NET + "---\n" + vm_spec("vm-a", network="nope"))
    desired = load(tmp_path, ImageFiles())
    assert [str(e) for e in desired.errors] == [f"{tmp_path}/net.yaml:16: spec.network: Network 'nope' does not exist"]
    assert "default" in desired.networks and not desired.vms


def test_vm_needs_a_network_when_there_are_several(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", NET)
    write(tmp_path / "b.yaml", network_spec(name="other", bridge="wvbr1", cidr="10.89.0.0/24"))
    write(tmp_path / "vm.yaml", vm_spec("vm-a"))
    assert "vm.yaml:5: spec.network: required: there are 2 networks" in str(load(tmp_path, ImageFiles()).errors[0])


def test_overlapping_cidrs(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", NET)
    write(tmp_path / "b.yaml", network_spec(name="other", bridge="wvbr1", cidr="10.88.0.0/16"))
    errors = [str(e) for e in load(tmp_path, ImageFiles()).errors]
    assert len(errors) == 1 and "b.yaml:7: spec.cidr: 10.88.0.0/16 overlaps network 'default'" in errors[0]


def test_pool_plus_vms_must_fit_on_the_bridge(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", network_spec(size=1023) + "---\n" + vm_spec("vm-a"))
    errors = [str(e) for e in load(tmp_path, ImageFiles()).errors]
    assert "spec.tapPool.size: 1023 idle TAPs + 1 VMs exceed the 1023 ports a bridge holds" in errors[0]


def test_identity_is_kind_and_name_not_file(tmp_path: Path) -> None:
    write(tmp_path / "one.yaml", NET + "---\n" + vm_spec("vm-a"))
    first = load(tmp_path, ImageFiles())
    (tmp_path / "one.yaml").rename(tmp_path / "moved.yml")
    second = load(tmp_path, ImageFiles())
    assert set(first.networks) == set(second.networks) and set(first.vms) == set(second.vms)
    assert first.vms["vm-a"].network == "default"


def test_valid_objects_survive_beside_invalid_ones(tmp_path: Path) -> None:
    write(tmp_path / "good.yaml", NET)
    write(tmp_path / "bad.yaml", "kind: [\n")
    desired = load(tmp_path, ImageFiles())
    assert "default" in desired.networks and not desired.complete


VM_CASES = {
    "vcpus_out_of_range": ({"vcpus": "0"}, "vm.yaml:6: spec.vcpus: Input should be greater than or equal to 1"),
    "memory_out_of_range": ({"memory": "16Mi"}, "vm.yaml:6: spec.memory: 16Mi is out of range (64Mi to 1Ti)"),
    "unknown_accel": ({"accel": "xen"}, "vm.yaml:6: spec.accel: Input should be 'auto', 'kvm' or 'tcg'"),
    "unknown_boot": ({"boot": "snapshot"}, "vm.yaml:6: spec.boot: Input should be 'cold' or 'restore'"),
    "ip_outside_network": ({"ip": "10.99.0.5"}, "vm.yaml:6: spec.ip: 10.99.0.5 is not a free host address of network 'default'"),
    "ip_is_the_gateway": ({"ip": "10.88.0.1"}, "vm.yaml:6: spec.ip: 10.88.0.1 is not a free host address"),
    "ip_not_an_address": ({"ip": "banana"}, "vm.yaml:6: spec.ip: 'banana' is not an IPv4 address"),
}


@pytest.mark.parametrize("case", sorted(VM_CASES))
def test_bad_vm_input(case: str, tmp_path: Path) -> None:
    spec, expected = VM_CASES[case]
    write(tmp_path / "net.yaml", NET)
    write(tmp_path / "vm.yaml", vm_spec("vm-a", **spec))
    errors = [str(e) for e in load(tmp_path, ImageFiles()).errors]
    assert len(errors) == 1 and expected in errors[0], errors


def test_one_ip_is_never_given_to_two_vms(tmp_path: Path) -> None:
    write(tmp_path / "net.yaml", NET)
    write(tmp_path / "vm.yaml", vm_spec("vm-a", ip="10.88.0.7") + "---\n" + vm_spec("vm-b", ip="10.88.0.7"))
    errors = [str(e) for e in load(tmp_path, ImageFiles()).errors]
    assert errors == [f"{tmp_path}/vm.yaml:13: spec.ip: 10.88.0.7 is already taken by VM 'vm-a'"]
