"""A fleet on etcd: 3 members and agents, each host a network namespace of its own with its own state
directory. Specs go in with `fleet apply`, are placed within capacity by transactions, provisioned by
the host they land on, reported back, reached through their host, and removed through its trash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.cli import network_spec, vm_spec, write
from ..support.fleet import FleetLab, fleet_lab, when
from ..support.images import demo_image_spec, fake_image, image_spec

MiB = 1 << 20


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FleetLab]:
    with fleet_lab(tmp_path) as lab:
        yield lab


def specs_with(tmp_path: Path, vms: dict[str, str], image: bool = True) -> Path:
    """A spec directory: the default network, the fake image (unless not `image`), and `vms` (name ->
    extra spec lines as `key: value` pairs, comma separated)."""
    specs = tmp_path / "specs"
    if image:
        fake_image(specs, tmp_path)
        write(specs / "image.yaml", image_spec())
    write(specs / "net.yaml", network_spec(size=1))
    for name, extra in vms.items():
        write(specs / f"{name}.yaml", vm_spec(name, **dict(p.split(": ", 1) for p in extra.split(", ") if p)))
    return specs


def start_hosts(lab: FleetLab, count: int, *extra: str) -> list[str]:
    names = [f"h{i}" for i in range(1, count + 1)]
    for name in names:
        lab.start(lab.add_host(name), *extra)
    return names


def link_names(netns: str) -> set[str]:
    done = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(done.stdout)}


def test_apply_places_within_capacity_and_each_host_provisions_and_removes_its_share(lab: FleetLab,
                                                                                    tmp_path: Path) -> None:
    start_hosts(lab, 3, "--capacity", "vcpus=4,memory=1Gi")
    specs = specs_with(tmp_path, {f"vm-{i}": "running: false, diskSize: 64Mi" for i in range(1, 7)})
    applied = lab.fleet("apply", "-f", str(specs))
    assert "vm/vm-1 created" in applied.stdout and "network/default created" in applied.stdout
    vms = lab.until(lambda: when(lab.vms(), lambda v: all(r["phase"] == "Stopped" for r in v.values())),
                    "every VM provisioned (Stopped: running: false) on its host")
    assert set(vms) == {f"vm-{i}" for i in range(1, 7)}
    hosts = lab.hosts()
    for name, host in hosts.items():
        assert host["state"] == "Ready"
        placed = [v for v in vms.values() if v["host"] == name]
        assert host["vms"] == len(placed) and len(placed) * 256 <= 1024, (name, host)
        agent = lab.agents[name]
        for vm in placed:  # its disk in that host's state directory, its TAP in that host's namespace
            assert (agent.state / "vms" / vm["name"] / "disk.img").exists()
            assert vm["ip"].startswith("10.88.0.")
        assert len([n for n in link_names(agent.netns) if n.startswith("tap-pool-")]) == len(placed) + 1
    assert lab.fleet("apply", "-f", str(specs)).stdout == "", "nothing changed: nothing written"
    gone = vms["vm-1"]["host"]
    (specs / "vm-1.yaml").unlink()
    assert "vm/vm-1 deleted" in lab.fleet("delete", "vm", "vm-1").stdout
    lab.until(lambda: "vm-1" not in lab.vms(), "vm-1 gone from the fleet")
    trash = lab.agents[gone].state / "trash"
    lab.until(lambda: trash.is_dir() and any(p.name.startswith("vm-1.") for p in trash.iterdir()),
              "vm-1's directory moved to its host's trash")
    assert not (lab.agents[gone].state / "vms" / "vm-1").exists()
    assert lab.hosts()[gone]["vms"] == sum(1 for v in lab.vms().values() if v["host"] == gone)


def test_racing_placers_never_overfill_a_host_or_place_a_vm_twice(lab: FleetLab, tmp_path: Path) -> None:
    start_hosts(lab, 3, "--capacity", "vcpus=64,memory=4Gi", "--no-place")
    specs = specs_with(tmp_path, {f"vm-{i:02}": "running: false" for i in range(60)}, image=False)
    lab.fleet("apply", "-f", str(specs))
    placers = [subprocess.Popen(["ip", "netns", "exec", f"{lab.prefix}-hub", *lab.cli, "fleet", "place"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "WARMVM_STORE": lab.endpoints}) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in placers]
    assert all(p.returncode == 0 for p in placers), outputs
    placed = [int(out.split("placed ")[1].split(",")[0]) for out, _ in outputs]
    assert sum(placed) == 48, f"each VM placed by exactly one of the racing placers: {outputs}"
    fleet = lab.store_dump()
    placements = {k.rsplit("/", 1)[1]: json.loads(v) for k, v in fleet.items() if k.startswith("/warmvm/placement/")}
    allocs = {k.rsplit("/", 1)[1]: json.loads(v) for k, v in fleet.items() if k.startswith("/warmvm/alloc/")}
    pending = {k.rsplit("/", 1)[1] for k in fleet if k.startswith("/warmvm/pending/")}
    assert len(placements) == 48 and len(pending) == 12, (len(placements), len(pending))  # 16 x 256Mi per host
    assert not set(placements) & pending
    for host, alloc in allocs.items():
        mine = [p for p in placements.values() if p["host"] == host]
        assert alloc["memory"] == sum(p["memory"] for p in mine) <= 4 << 30, (host, alloc)
        assert alloc["vms"] == len(mine) == 16
    rows = lab.vms()
    assert {r["phase"] for n, r in rows.items() if n in pending} == {"Pending"}
    assert all("fits no host: needs 1 vCPUs, 256Mi" in rows[n]["reason"] for n in pending)


def test_a_vm_that_fits_nowhere_is_pending_with_why_and_a_second_agent_for_a_host_is_refused(
        lab: FleetLab, tmp_path: Path) -> None:
    start_hosts(lab, 1, "--capacity", "vcpus=2,memory=1Gi", "--labels", "zone=a")
    specs = specs_with(tmp_path, {"big": "running: false, memory: 2Gi", "elsewhere": "hostSelector: {zone: b}",
                                  "fits": "running: false, diskSize: 64Mi"})
    lab.fleet("apply", "-f", str(specs))
    vms = lab.until(lambda: when(lab.vms(), lambda v: v.get("fits", {}).get("phase") == "Stopped"), "fits provisioned")
    assert vms["big"]["phase"] == "Pending" and "needs 1 vCPUs, 2048Mi" in vms["big"]["reason"]
    assert vms["elsewhere"]["phase"] == "Pending" and "labels do not match" in vms["elsewhere"]["reason"]
    second = lab.agents["h1"].state.with_name("state-other")
    done = lab.warmvm("--state", str(second), "agent", "--host", "h1", netns=lab.agents["h1"].netns)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("warmvm: host h1 is held by a live agent"), done.stderr


def test_bad_specs_write_nothing_and_an_unreachable_store_is_one_line(lab: FleetLab, tmp_path: Path) -> None:
    specs = specs_with(tmp_path, {"ok": "running: false", "bad": "vcpus: 999"})
    done = lab.fleet("apply", "-f", str(specs), ok=False)
    assert done.returncode == 1
    assert f"{specs / 'bad.yaml'}:6: spec.vcpus:" in done.stderr, done.stderr
    assert "nothing written" in done.stderr
    assert lab.store_dump() == {}, "nothing was written while a file was invalid"
    dead = lab.warmvm("fleet", "get", "vms", "--store", "http://127.0.0.1:1,http://127.0.0.1:2")
    assert dead.returncode == 1 and "Traceback" not in dead.stderr
    line = dead.stderr.strip()
    assert "\n" not in line and "http://127.0.0.1:1" in line and "http://127.0.0.1:2" in line, line


def test_a_malformed_value_in_the_store_is_reported_and_skipped(lab: FleetLab, tmp_path: Path) -> None:
    start_hosts(lab, 1, "--capacity", "vcpus=4,memory=1Gi")
    lab.fleet("apply", "-f", str(specs_with(tmp_path, {"good": "running: false, diskSize: 64Mi"})))
    lab.etcdctl("put", "/warmvm/spec/vm/broken", "{not json")
    lab.etcdctl("put", "/warmvm/spec/vm/wrong", json.dumps({"apiVersion": "warmvm/v1", "kind": "VM",
                                                            "metadata": {"name": "wrong"}, "spec": {"vcpus": 0}}))
    vms = lab.until(lambda: when(lab.vms(), lambda v: v.get("good", {}).get("phase") == "Stopped"),
                    "the good VM converges beside the malformed ones")
    assert "broken" not in vms and "wrong" not in vms
    done = lab.fleet("get", "vms")
    assert "/warmvm/spec/vm/broken: skipped" in done.stderr and "/warmvm/spec/vm/wrong: skipped" in done.stderr


def test_an_etcd_member_killed_stops_no_vm_and_the_agents_carry_on(lab: FleetLab, tmp_path: Path) -> None:
    start_hosts(lab, 2, "--capacity", "vcpus=4,memory=2Gi")
    specs = specs_with(tmp_path, {"a": "running: false, diskSize: 64Mi", "b": "running: false, diskSize: 64Mi"})
    lab.fleet("apply", "-f", str(specs))
    lab.until(lambda: all(r["phase"] == "Stopped" for r in lab.vms().values()), "a and b provisioned")
    leader = lab.leader()
    os.kill(lab.member_pid(leader), signal.SIGKILL)
    write(specs / "c.yaml", vm_spec("c", running="false", diskSize="64Mi"))
    lab.fleet("apply", "-f", str(specs))  # through the members left
    vms = lab.until(lambda: when(lab.vms(), lambda v: v.get("c", {}).get("phase") == "Stopped"),
                    "c placed and provisioned after the leader's kill -9")
    assert {r["phase"] for r in vms.values()} == {"Stopped"}
    assert all(a.process is not None and a.process.poll() is None for a in lab.agents.values())
    assert {h["state"] for h in lab.hosts().values()} == {"Ready"}, "the leases were kept through the others"


def test_an_agent_cut_off_from_the_store_keeps_its_vms_and_catches_up(lab: FleetLab, tmp_path: Path) -> None:
    agent = lab.start(lab.add_host("h1"), "--capacity", "vcpus=4,memory=2Gi", "--metrics-addr", "127.0.0.1:9464")
    specs = specs_with(tmp_path, {"a": "running: false, diskSize: 64Mi"})
    lab.fleet("apply", "-f", str(specs))
    lab.until(lambda: lab.vms()["a"]["phase"] == "Stopped", "a provisioned")
    subprocess.run(["ip", "-n", agent.netns, "link", "set", "eth0", "down"], check=True)
    lab.until(lambda: lab.metric(agent, "warmvm_fleet_store_up") == 0, "the agent reports store_up 0")
    lab.until(lambda: lab.hosts()["h1"]["state"] == "Lost", "its presence expired (TTL)")
    write(specs / "b.yaml", vm_spec("b", running="false", diskSize="64Mi"))
    lab.fleet("apply", "-f", str(specs))
    assert lab.vms()["b"]["phase"] == "Pending", "no live host to place it on"
    assert (agent.state / "vms" / "a" / "disk.img").exists(), "nothing on the host stopped or went"
    assert agent.process is not None and agent.process.poll() is None
    subprocess.run(["ip", "-n", agent.netns, "link", "set", "eth0", "up"], check=True)
    lab.until(lambda: all(r["phase"] == "Stopped" and r["host"] == "h1" for r in lab.vms().values()),
              "back: present again, b placed and provisioned", timeout=90)
    assert lab.metric(agent, "warmvm_fleet_store_up") == 1


@pytest.mark.e2e
def test_a_vm_boots_on_a_fleet_host_and_answers_fleet_ssh(lab: FleetLab, tmp_path: Path, demo_image: Path) -> None:
    start_hosts(lab, 2)
    specs = tmp_path / "specs"
    write(specs / "net.yaml", network_spec(size=1))
    write(specs / "image.yaml", demo_image_spec(demo_image))
    write(specs / "vm.yaml", vm_spec("web"))
    lab.fleet("apply", "-f", str(specs))
    vm = lab.until(lambda: when(lab.vms()["web"], lambda v: v["phase"] == "Running"), "web Running",
                   timeout=180)
    assert vm["boot"] == "cold" and vm["ip"].startswith("10.88.0.")
    done = lab.fleet("ssh", "web", "--", "cat", "/proc/sys/kernel/hostname")
    assert done.stdout.strip() == "web"
    logs = lab.fleet("logs", "web")
    assert "warmvm: ready" in logs.stdout
    lab.fleet("delete", "vm", "web")
    host = lab.agents[vm["host"]]
    lab.until(lambda: not (host.state / "vms" / "web").exists(), "web stopped and moved to the trash", timeout=60)
