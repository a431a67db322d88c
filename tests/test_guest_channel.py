"""The control channel with real guests: readiness without a login of the controller's, `warmvm exec`
(output, exit codes, a timeout, a flood), and guests that misbehave on it (garbage, silence) while
the daemon and the other VMs carry on.

The guest's dropbear logs every connection on the console ("Child connection from ..."), so the
console tells how many SSH connections a guest got, the controller's included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.adapters import guest

from .support.cli import REPO, assert_verified, reconcile, records, ssh, vm_record, vm_spec, vms, warmvm, write
from .support.daemon import Daemon
from .support.images import demo_image_spec
from .support.waits import wait_for

pytestmark = pytest.mark.e2e

CONNECTION = b"Child connection from"
# in the guest: the channel's port device, found by its name (as the agent finds it)
PORT = ("for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = org.warmvm.control ] && "
        "dev=/dev/${p##*/}; done; ")
# in the guest: the agent and its respawn loop ended, so that something else may open the port
STOP_AGENT = ("a=$(pidof warmvm-agent); kill $(awk '{print $4}' /proc/$a/stat) $a; "
              "while pidof warmvm-agent >/dev/null; do usleep 10000; done; ")
START_AGENT = "setsid /sbin/warmvm-agent </dev/null >/dev/null 2>&1 &"


def connections(state: Path, vm: str) -> int:
    """SSH connections the guest's dropbear accepted since its boot (its console log)."""
    return (state / "vms" / vm / "console.log").read_bytes().count(CONNECTION)


def execute(state: Path, vm: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """`warmvm exec VM ARGV...` (ARGV holds the options, `--` and the command)."""
    return subprocess.run([sys.executable, "-m", "controller", "--state", str(state), "exec", vm, *argv],
                          capture_output=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def test_a_vm_is_running_without_a_single_ssh_login_of_the_controller(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi"))
    reconcile(specs, state)
    row = vms(specs, state)["vm-a"]
    assert row["phase"] == "Running" and row["readiness"] == "channel", row
    assert vm_record(state, "vm-a")["readiness"] == "channel"
    assert connections(state, "vm-a") == 0, "the controller logged in to find the VM ready"
    assert ssh(state, "vm-a", "hostname") == "vm-a\n", "SSH works from the first login"
    wait_for(lambda: connections(state, "vm-a") == 1, timeout=10, what="the console to count the user's login")
    assert_verified(specs, state)


def test_a_restored_vm_is_ready_over_its_channel_and_runs_commands(demo_host: tuple[Path, Path]) -> None:
    """The agent runs in the snapshot's template already (its port open): every copy has it, and its
    channel, at once."""
    specs, state = demo_host
    first = vm_spec("vm-first", diskSize="64Mi")
    write(specs / "vms.yaml", first)
    reconcile(specs, state)  # the pool and the seed are warm
    early = vm_spec("vm-early", boot="restore", diskSize="64Mi")
    write(specs / "vms.yaml", first + "---\n" + early)
    assert "snapshot_generate" in reconcile(specs, state).stderr  # vm-early boots cold meanwhile
    write(specs / "vms.yaml", "---\n".join([first, early, vm_spec("vm-r", boot="restore", diskSize="64Mi")]))
    reconcile(specs, state)
    record = vm_record(state, "vm-r")
    assert record["boot"] == "restore" and record["readiness"] == "channel", record
    assert connections(state, "vm-r") == 0
    done = execute(state, "vm-r", "--", "sh", "-c", "hostname; cat /proc/sys/kernel/random/boot_id")
    assert done.returncode == 0, done.stderr
    name, boot_id = done.stdout.decode().split()
    assert name == "vm-r"
    assert boot_id != execute(state, "vm-early", "--", "cat", "/proc/sys/kernel/random/boot_id").stdout.decode().strip()
    assert ssh(state, "vm-r", "hostname") == "vm-r\n"
    assert_verified(specs, state)


def test_exec_streams_output_and_passes_exit_codes_even_with_ssh_down(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi"))
    reconcile(specs, state)
    done = execute(state, "vm-a", "--", "sh", "-c", "echo out; echo err >&2; echo more; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\nmore\n", b"err\n")
    assert execute(state, "vm-a", "--", "pwd").stdout == b"/root\n"
    assert execute(state, "vm-a", "--", "false").returncode == 1
    missing = execute(state, "vm-a", "--", "no-such-command")
    assert missing.returncode == 127 and b"no-such-command" in missing.stderr
    assert execute(state, "vm-a", "--", "sh", "-c", "kill -9 $$").returncode == 128 + 9
    binary = execute(state, "vm-a", "--", "head", "-c", "300000", "/dev/urandom")
    assert binary.returncode == 0 and len(binary.stdout) == 300000
    # both streams at once to a slow reader: the guest's queue fills, and nothing is lost
    got = {1: 0, 2: 0}

    def slowly(stream: int, data: bytes) -> None:
        got[stream] += len(data)
        time.sleep(0.003)
    with guest.open_session(state / "vms" / "vm-a" / "ctl.sock", time.monotonic() + 10) as channel:
        argv = ["sh", "-c", "head -c 2000000 /dev/zero & head -c 2000000 /dev/zero >&2; wait"]
        assert guest.run(channel, argv, time.monotonic() + 60, slowly) == 0
    assert got == {1: 2000000, 2: 2000000}, "nothing lost"
    # SSH broken: dropbear stopped for good (its respawn loop held); exec does not need it
    assert execute(state, "vm-a", "--", "sh", "-c", "d=$(pidof dropbear); l=$(awk '{print $4}' /proc/$d/stat); "
                                                  "kill -STOP $l; kill $d").returncode == 0
    broken = warmvm(specs, state, "ssh", "vm-a", "--", "true")
    assert broken.returncode != 0
    assert execute(state, "vm-a", "--", "hostname").stdout == b"vm-a\n"
    nothing = execute(state, "vm-a")
    assert nothing.returncode == 1 and b"no command given" in nothing.stderr
    unknown = execute(state, "vm-zz", "--", "true")
    assert unknown.returncode == 1 and unknown.stderr.count(b"\n") == 1 and b"no such VM" in unknown.stderr


def test_exec_is_bounded_by_its_timeout_and_its_output(demo_host: tuple[Path, Path]) -> None:
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-a", diskSize="64Mi"))
    reconcile(specs, state)
    start = time.monotonic()
    slow = execute(state, "vm-a", "--timeout", "1", "--", "sh", "-c", "echo started; sleep 30")
    took = time.monotonic() - start
    assert slow.returncode == 124 and slow.stdout == b"started\n" and b"timed out after 1s" in slow.stderr
    assert took < 5, took
    start = time.monotonic()
    flood = execute(state, "vm-a", "--", "yes", timeout=120)
    took = time.monotonic() - start
    assert flood.returncode == 1 and b"passed 16 MiB" in flood.stderr, flood.stderr
    assert 15 << 20 < len(flood.stdout) <= 16 << 20, len(flood.stdout)
    # the guest killed both when the channel closed (each with its process group)
    left = execute(state, "vm-a", "--", "sh", "-c", "pidof yes sleep || echo none")
    assert left.stdout == b"none\n", left.stdout
    print(f"flood of 16 MiB stopped after {took:.1f}s")


def test_a_guest_that_writes_garbage_or_nothing_on_its_channel_harms_no_one(demo_host: tuple[Path, Path]) -> None:
    """The agent of vm-bad is replaced by a process that floods its port with random bytes, then by
    nothing at all: each exec fails with one line, within its bound, while the daemon answers its
    scrapes and vm-good runs commands; the agent back, exec works again."""
    specs, state = demo_host
    write(specs / "vms.yaml", vm_spec("vm-bad", diskSize="64Mi") + "---\n" + vm_spec("vm-good", diskSize="64Mi"))
    reconcile(specs, state)
    daemon = Daemon(specs, state)
    try:
        wait_for(lambda: daemon.finished() >= 1, timeout=60, what="the daemon's first pass")
        ssh(state, "vm-bad", PORT + STOP_AGENT + "setsid sh -c 'echo $$ > /tmp/flood; "
                                 "while :; do cat /dev/urandom; done' > $dev 2>/dev/null </dev/null &")
        for _ in range(3):
            start = time.monotonic()
            bad = execute(state, "vm-bad", "--", "true", timeout=30)
            assert bad.returncode == 1 and bad.stderr.count(b"\n") == 1, bad.stderr
            assert b"unknown type" in bad.stderr or b"bytes (at most" in bad.stderr, bad.stderr
            assert time.monotonic() - start < 5
            scrape = time.monotonic()
            assert daemon.metric("warmvm_reconcile_passes_total") >= 1
            assert time.monotonic() - scrape < 1, "the daemon answers its scrapes at once"
            assert execute(state, "vm-good", "--", "hostname").stdout == b"vm-good\n"
        ssh(state, "vm-bad", "kill -9 -$(cat /tmp/flood)")  # nothing on the port now: silence
        start = time.monotonic()
        silent = execute(state, "vm-bad", "--", "true", timeout=30)
        assert silent.returncode == 1 and b"no answer from the guest's agent" in silent.stderr, silent.stderr
        assert time.monotonic() - start < 10
        assert execute(state, "vm-good", "--", "hostname").stdout == b"vm-good\n"
        ssh(state, "vm-bad", START_AGENT)
        wait_for(lambda: execute(state, "vm-bad", "--", "hostname").stdout == b"vm-bad\n", timeout=30, interval=0.5,
                 what="vm-bad's agent back")
        assert vms(specs, state)["vm-bad"]["phase"] == "Running"
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def test_an_image_without_the_agent_is_still_found_ready_over_ssh(demo_host: tuple[Path, Path], demo_image: Path,
                                                                  tmp_path: Path) -> None:
    specs, state = demo_host
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("vmlinuz", "initrd.img", "rootfs.ext4"):
        shutil.copy(demo_image / name, plain / name)
    subprocess.run(["debugfs", "-w", "-R", "rm /sbin/warmvm-agent", str(plain / "rootfs.ext4")], check=True,
                   capture_output=True)
    write(specs / "plain.yaml", demo_image_spec(demo_image, name="plain", default=False, boot_files=plain))
    write(specs / "vms.yaml", vm_spec("vm-p", image="plain", diskSize="64Mi") + "---\n"
          + vm_spec("vm-off", diskSize="64Mi", running="false"))
    result = reconcile(specs, state, "--log-format", "json")
    (awaited,) = [r for r in records(result.stderr) if r.get("stage") == "vm_await"]
    assert awaited["readiness"] == "ssh" and awaited["ssh_because"] == "no guest agent answered", awaited
    assert vms(specs, state)["vm-p"]["readiness"] == "ssh"
    assert connections(state, "vm-p") >= 1
    start = time.monotonic()
    none = execute(state, "vm-p", "--", "true")
    assert none.returncode == 1 and b"no answer from the guest's agent" in none.stderr, none.stderr
    assert time.monotonic() - start < 10
    off = execute(state, "vm-off", "--", "true")
    assert off.returncode == 1 and off.stderr.startswith(b"warmvm: vm/vm-off: not running")
    assert off.stderr.count(b"\n") == 1
    assert_verified(specs, state)
