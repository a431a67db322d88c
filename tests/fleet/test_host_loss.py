"""When a host dies or is cut off (chaos, each bounded in time): presence on a lease, `wait` VMs left
where they are, `recreate` VMs placed anew elsewhere after their lostAfter, fencing, the agent that
comes back adopting what is still its own and trashing what moved, drain, and `fleet verify` after
every step. TTL 3 s in tests (the default is 15 s)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.cli import write
from ..support.fleet import FleetLab, fleet_lab, when
from ..support.images import demo_image_spec, fake_image, image_spec

LOST_AFTER = "4s"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FleetLab]:
    with fleet_lab(tmp_path) as lab:
        yield lab


def vm_doc(name: str, policy: str, **spec: str) -> str:
    lines = "".join(f"  {k}: {v}\n" for k, v in {"onHostLoss": policy, "lostAfter": LOST_AFTER, **spec}.items())
    return f"apiVersion: warmvm/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n{lines}"


def fake_specs(tmp_path: Path, vms: dict[str, str], **spec: str) -> Path:
    """The default network, the fake image, and VMs name -> onHostLoss (running: false unless said)."""
    specs = tmp_path / "specs"
    fake_image(specs, tmp_path)
    write(specs / "image.yaml", image_spec())
    write(specs / "net.yaml", "apiVersion: warmvm/v1\nkind: Network\nmetadata: {name: default}\n"
                              "spec: {bridge: wvbr0, cidr: 10.88.0.0/24, tapPool: {size: 1}}\n")
    for name, policy in vms.items():
        write(specs / f"{name}.yaml", vm_doc(name, policy, **({"running": "false", "diskSize": "64Mi"} | spec)))
    return specs


def verified(lab: FleetLab) -> None:
    done = lab.fleet("verify", ok=False)
    assert done.returncode == 0, done.stdout + done.stderr


def settled(lab: FleetLab, phase: str = "Stopped") -> dict[str, dict[str, str]]:
    return lab.until(lambda: when(lab.vms(), lambda v: all(r["phase"] == phase for r in v.values())),
                     f"every VM {phase}", timeout=90)


def test_an_agent_killed_leaves_wait_vms_and_recreates_recreate_vms_and_coming_back_adopts_and_trashes(
        lab: FleetLab, tmp_path: Path) -> None:
    h1 = lab.start(lab.add_host("h1"), "--capacity", "vcpus=8,memory=4Gi")
    specs = fake_specs(tmp_path, {"keep": "wait", "move": "recreate"})
    lab.fleet("apply", "-f", str(specs))
    settled(lab)
    lab.start(lab.add_host("h2"), "--capacity", "vcpus=8,memory=4Gi")
    verified(lab)
    keep_disk = (h1.state / "vms" / "keep" / "disk.img").stat().st_ino
    assert h1.process is not None
    h1.process.send_signal(signal.SIGKILL)  # its VMs' files and devices stay, as a dead host's would
    h1.process.wait()
    h1.process = None
    lab.until(lambda: lab.hosts()["h1"]["state"] == "Lost", "h1 Lost after the TTL", timeout=30)
    vms = lab.until(lambda: when(lab.vms(), lambda v: v["move"]["host"] == "h2" and v["move"]["phase"] == "Stopped"),
                    "move recreated on h2 after lostAfter", timeout=60)
    assert vms["keep"]["phase"] == "HostLost" and vms["keep"]["host"] == "h1", "a wait VM waits for its host"
    verified(lab)
    lab.start(h1, "--capacity", "vcpus=8,memory=4Gi")  # the same state directory: it adopts, never recreates
    lab.until(lambda: not (h1.state / "vms" / "move").exists(), "the stale copy of move left h1 (to its trash)")
    assert any(p.name.startswith("move.") for p in (h1.state / "trash").iterdir())
    vms = settled(lab)
    assert vms["keep"]["host"] == "h1" and (h1.state / "vms" / "keep" / "disk.img").stat().st_ino == keep_disk
    verified(lab)


def test_drain_moves_every_recreate_vm_and_lists_the_wait_vms(lab: FleetLab, tmp_path: Path) -> None:
    lab.start(lab.add_host("h1"), "--capacity", "vcpus=8,memory=4Gi")
    lab.fleet("apply", "-f", str(fake_specs(tmp_path, {"a": "recreate", "b": "recreate", "w": "wait"})))
    settled(lab)
    lab.start(lab.add_host("h2"), "--capacity", "vcpus=8,memory=4Gi")
    done = lab.fleet("drain", "h1")
    assert "vm/w: onHostLoss: wait: left on h1" in done.stdout and "2 moved, 1 left" in done.stdout
    vms = settled(lab)
    assert (vms["a"]["host"], vms["b"]["host"], vms["w"]["host"]) == ("h2", "h2", "h1")
    assert "Cordoned" in lab.hosts()["h1"]["state"]
    lab.until(lambda: not (lab.agents["h1"].state / "vms" / "a").exists(), "a left h1")
    verified(lab)
    assert "--force" in lab.fleet("evict", "w", ok=False).stderr
    assert "its disk stays behind on h1" in lab.fleet("evict", "w", "--force").stdout
    lab.until(lambda: lab.vms()["w"]["host"] == "h2" and lab.vms()["w"]["phase"] == "Stopped", "w on h2")
    verified(lab)


def test_an_etcd_member_cut_off_sends_the_agents_to_the_others(lab: FleetLab, tmp_path: Path) -> None:
    lab.start(lab.add_host("h1"), "--capacity", "vcpus=8,memory=4Gi")
    specs = fake_specs(tmp_path, {"a": "wait"})
    lab.fleet("apply", "-f", str(specs))
    settled(lab)
    veth = f"vf{lab.manifest['token'][:4]}e1"  # m1: the endpoint every client tries first
    subprocess.run(["ip", "-n", f"{lab.prefix}-hub", "link", "set", veth, "down"], check=True)
    try:
        write(specs / "b.yaml", vm_doc("b", "wait", running="false", diskSize="64Mi"))
        lab.fleet("apply", "-f", str(specs))
        vms = settled(lab)
        assert set(vms) == {"a", "b"} and lab.hosts()["h1"]["state"] == "Ready"
        verified(lab)
    finally:
        subprocess.run(["ip", "-n", f"{lab.prefix}-hub", "link", "set", veth, "up"], check=True)


@pytest.mark.e2e
def test_a_partitioned_host_stops_its_recreate_vm_and_after_the_heal_nothing_runs_twice(
        lab: FleetLab, tmp_path: Path, demo_image: Path) -> None:
    h1 = lab.start(lab.add_host("h1"))
    specs = tmp_path / "specs"
    write(specs / "net.yaml", "apiVersion: warmvm/v1\nkind: Network\nmetadata: {name: default}\n"
                              "spec: {bridge: wvbr0, cidr: 10.88.0.0/24, tapPool: {size: 1}}\n")
    write(specs / "image.yaml", demo_image_spec(demo_image))
    write(specs / "vm.yaml", vm_doc("web", "recreate", diskSize="256Mi"))
    lab.fleet("apply", "-f", str(specs))
    settled(lab, "Running")
    lab.start(lab.add_host("h2"))
    subprocess.run(["ip", "-n", h1.netns, "link", "set", "eth0", "down"], check=True)
    lab.until(lambda: not _qemu_running(h1.state), "h1 fenced: its recreate VM stopped", timeout=60)
    lab.until(lambda: lab.vms()["web"]["host"] == "h2" and lab.vms()["web"]["phase"] == "Running",
              "web recreated and Running on h2", timeout=180)
    subprocess.run(["ip", "-n", h1.netns, "link", "set", "eth0", "up"], check=True)
    lab.until(lambda: not (h1.state / "vms" / "web").exists(), "h1 trashed its stale copy", timeout=60)
    assert not _qemu_running(h1.state)
    verified(lab)


def _qemu_running(state: Path) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and argv.startswith(b"qemu-system") and str(state).encode() in argv:
            return True
    return False

