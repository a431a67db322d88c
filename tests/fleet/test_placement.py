"""Placement and a host's share as data: the fleet as a range read would return it, the choices out.
Pure: no store, no host."""

from __future__ import annotations

import json
from typing import Any

from controller.fleet.plan import audit, place_all, share, unplaced
from controller.fleet.state import Fleet, fleet_from, with_events
from controller.specs.schema import parse_quantity

GiB = 1 << 30


def doc(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "warmvm/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def fleet(hosts: dict[str, dict[str, Any]], docs: list[dict[str, Any]], placed: dict[str, str] | None = None,
          alive: set[str] | None = None) -> Fleet:
    """hosts: name -> {vcpus, memory, labels}; placed: vm -> host (reserving its spec)."""
    items: list[tuple[str, bytes, int]] = []
    for i, d in enumerate(docs):
        items.append((f"/warmvm/spec/{d['kind'].lower()}/{d['metadata']['name']}", json.dumps(d).encode(), 10 + i))
    alloc: dict[str, dict[str, int]] = {}
    for vm, host in (placed or {}).items():
        spec = next(d["spec"] for d in docs if d["metadata"]["name"] == vm)
        need = {"vcpus": spec.get("vcpus", 1), "memory": parse_quantity(spec.get("memory", "256Mi"))}
        items.append((f"/warmvm/placement/{vm}", json.dumps({"host": host, "epoch": 1, "placed": 1.0, **need}).encode(),
                      100))
        a = alloc.setdefault(host, {"vcpus": 0, "memory": 0, "vms": 0})
        a["vcpus"], a["memory"], a["vms"] = a["vcpus"] + need["vcpus"], a["memory"] + need["memory"], a["vms"] + 1
    for host, a in alloc.items():
        items.append((f"/warmvm/alloc/{host}", json.dumps(a).encode(), 100))
    for name, h in hosts.items():
        info = {"labels": h.get("labels", {}), "vcpus": h["vcpus"], "memory": h["memory"], "reach": "local",
                "state": f"/var/lib/{name}", "command": ["warmvm"]}
        items.append((f"/warmvm/host/{name}/info", json.dumps(info).encode(), 5))
        if alive is None or name in alive:
            items.append((f"/warmvm/host/{name}/alive", json.dumps({"instance": "0" * 8, "pid": 1, "since": 1.0}).encode(),
                          5))
    return fleet_from(items, 200)


NET, IMAGE = doc("Network", "default", bridge="wvbr0", cidr="10.88.0.0/24"), \
    doc("Image", "demo", kernel="/k", rootfs="/r", default=True)


def test_vms_spread_by_free_memory_and_no_host_is_given_more_than_its_capacity() -> None:
    vms = [doc("VM", f"vm-{i}", memory=f"{512}Mi") for i in range(7)]
    f = fleet({"a": {"vcpus": 8, "memory": 2 * GiB}, "b": {"vcpus": 8, "memory": 1 * GiB}}, [NET, IMAGE, *vms])
    batches, nowhere = place_all(f, unplaced(f))
    assert {h: len(c) for h, c in batches.items()} == {"a": 4, "b": 2}
    assert set(nowhere) == {"vm-6"} and nowhere["vm-6"].startswith("fits no host: needs 1 vCPUs, 512Mi")
    assert [c.vm for c in batches["b"]][0] == "vm-2", "the host with the most free memory (then vCPUs) first"


def test_what_is_placed_already_counts_against_its_host() -> None:
    vms = [doc("VM", "old", vcpus=3), doc("VM", "new", vcpus=2)]
    f = fleet({"a": {"vcpus": 4, "memory": 4 * GiB}, "b": {"vcpus": 1, "memory": 4 * GiB}}, [NET, IMAGE, *vms],
              placed={"old": "a"})
    batches, nowhere = place_all(f, unplaced(f))
    assert batches == {} and "a: 1 vCPUs, 3840Mi free; b: 1 vCPUs, 4096Mi free" in nowhere["new"]


def test_selectors_of_vms_networks_and_images_and_lost_hosts_narrow_where_a_vm_goes() -> None:
    docs = [doc("Network", "edge", bridge="wvbr1", cidr="10.89.0.0/24", hostSelector={"zone": "edge"}),
            doc("Network", "core", bridge="wvbr0", cidr="10.88.0.0/24", hostSelector={"zone": "core"}), IMAGE,
            doc("VM", "e", network="edge"), doc("VM", "pinned", network="core", hostSelector={"disk": "ssd"}),
            doc("VM", "anywhere")]
    hosts = {"edge1": {"vcpus": 4, "memory": 4 * GiB, "labels": {"zone": "edge"}},
             "core1": {"vcpus": 4, "memory": 4 * GiB, "labels": {"zone": "core"}},
             "core2": {"vcpus": 4, "memory": 4 * GiB, "labels": {"zone": "core", "disk": "ssd"}}}
    batches, nowhere = place_all(fleet(hosts, docs, alive={"edge1", "core1"}), unplaced(fleet(hosts, docs)))
    placed = {c.vm: h for h, cs in batches.items() for c in cs}
    assert placed["e"] == "edge1" and placed["anywhere"] in ("edge1", "core1")
    assert "pinned" in nowhere and "labels do not match" in nowhere["pinned"], "its only host (core2) is not alive"


def test_a_hosts_share_is_what_applies_to_it_and_the_vms_placed_on_it_as_reserved() -> None:
    docs = [NET, IMAGE, doc("Network", "other", bridge="wvbr1", cidr="10.89.0.0/24", hostSelector={"zone": "x"}),
            doc("VM", "mine", memory="1Gi"), doc("VM", "theirs")]
    f = fleet({"a": {"vcpus": 4, "memory": 4 * GiB}, "b": {"vcpus": 4, "memory": 4 * GiB}}, docs,
              placed={"mine": "a", "theirs": "b"})
    files = share(f, "a", {})
    assert sorted(files) == ["image-demo.yaml", "network-default.yaml", "vm-mine.yaml"]
    spec = json.loads(files["vm-mine.yaml"])["spec"]
    assert (spec["vcpus"], spec["memory"]) == (1, "1048576Ki")


def test_a_malformed_value_is_reported_and_skipped_and_the_rest_is_read() -> None:
    good = json.dumps(doc("VM", "good")).encode()
    f = fleet_from([("/warmvm/spec/vm/good", good, 3), ("/warmvm/spec/vm/bad", b"{oops", 4),
                    ("/warmvm/spec/vm/zero", json.dumps(doc("VM", "zero", vcpus=0)).encode(), 5),
                    ("/warmvm/placement/x", b'{"host": "a"}', 6), ("/warmvm/what/ever", b"{}", 7)], 9)
    assert list(f.of_kind("VM")) == ["good"]
    assert [p.split(":")[0] for p in f.problems] == ["/warmvm/spec/vm/bad", "/warmvm/spec/vm/zero",
                                                      "/warmvm/placement/x", "/warmvm/what/ever"]


def test_a_watchs_changes_keep_the_fleet_as_a_new_read_would_find_it() -> None:
    before = fleet({"a": {"vcpus": 4, "memory": 4 * GiB}}, [NET, IMAGE, doc("VM", "x"), doc("VM", "y")],
                   placed={"x": "a"})
    after = with_events(before, [
        ("/warmvm/spec/vm/y", None, 300),  # deleted
        ("/warmvm/spec/vm/z", json.dumps(doc("VM", "z", vcpus=2)).encode(), 301),
        ("/warmvm/placement/x", None, 302),
        ("/warmvm/spec/vm/bad", b"{oops", 303),
        ("/warmvm/placer", b'{"host": "a"}', 304)])
    assert sorted(after.of_kind("VM")) == ["x", "z"] and after.of_kind("VM")["z"].need.vcpus == 2  # type: ignore[union-attr]
    assert "x" not in after.placements and after.placer is not None and after.placer.value == "a"
    assert after.revision == 304 and [p.split(":")[0] for p in after.problems] == ["/warmvm/spec/vm/bad"]
    assert sorted(before.of_kind("VM")) == ["x", "y"], "the fleet read before is left as it was"


def test_the_audit_names_an_overfilled_host_an_allocation_that_is_not_the_sum_and_a_vm_running_twice() -> None:
    f = fleet({"a": {"vcpus": 1, "memory": 4 * GiB}, "b": {"vcpus": 4, "memory": 4 * GiB}},
              [NET, IMAGE, doc("VM", "x", vcpus=2), doc("VM", "y")], placed={"x": "a", "y": "b"})
    status = json.dumps({"phase": "Running", "epoch": 1}).encode()
    f = with_events(f, [("/warmvm/status/a/y", status, 301), ("/warmvm/status/b/y", status, 302),
                        ("/warmvm/alloc/b", json.dumps({"vcpus": 3, "memory": 1, "vms": 1}).encode(), 303)])
    found = audit(f)
    assert "host/a: allocation 2 vCPUs, 256Mi is over its capacity 1 vCPUs, 4096Mi" in found
    assert any(line.startswith("host/b: allocation 3 vCPUs") and "is not the sum" in line for line in found)
    assert "vm/y: runs on a (epoch 1), assigned to b (epoch 1)" in found and "vm/y: runs on a, b at once" in found
    clean = fleet({"a": {"vcpus": 4, "memory": 4 * GiB}}, [NET, IMAGE, doc("VM", "x")], placed={"x": "a"})
    assert audit(clean) == []
