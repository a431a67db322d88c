"""The warm TAP pool against the real kernel, each test in its own namespace."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
from pathlib import Path

from controller.adapters.netlink import messages, rtnl
from controller.adapters.netlink.messages import Link
from controller.adapters.netlink.rtnl import dump_links
from controller.engine.state import Observed
from controller.network.driver import NetworkDriver
from controller.network.marks import pool_mark, vm_mark
from controller.network.observe import observe_net

from .support.cli import REPO, command, instance, network_spec, reconcile, vm_spec, warmvm, write
from .support.waits import wait_for


def links() -> dict[str, Link]:
    return {link.name: link for link in dump_links()}


def tap_names() -> list[str]:
    """An approximate count while TAPs appear at 1 per ms: every dump is flagged interrupted then."""
    chunks = rtnl._dump_raw(messages.dump_request)
    return [link.name for link in messages.parse_links(chunks, strict=False) if link.name.startswith("tap-pool-")]


def pool_taps(state: Path, network: str = "default") -> dict[str, Link]:
    return {n: l for n, l in links().items() if l.alias == str(pool_mark(instance(state), network))}


def test_warm_up_reaches_size_and_second_pass_does_nothing(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=5))
    reconcile(specs, state)
    all_links = links()
    bridge = all_links["wvbr0"]
    taps = pool_taps(state)
    assert len(taps) == 5
    assert all(t.kind == "tun" and t.master == bridge.index and t.up for t in taps.values())
    assert bridge.up and bridge.alias == f"warmvm:{instance(state)}:bridge:default"
    assert "10.88.0.1/24" in subprocess.run(["ip", "-4", "addr", "show", "wvbr0"],
                                           capture_output=True, text=True).stdout
    second = reconcile(specs, state)
    assert "0 applied" in second.stderr and "0 passes" in second.stderr
    assert warmvm(specs, state, "plan").returncode == 0
    assert (state.stat().st_mode & 0o777) == 0o700


def link_address(name: str) -> str:
    return str(json.loads(subprocess.run(["ip", "-j", "link", "show", name], capture_output=True, text=True,
                                         check=True).stdout)[0]["address"])


def test_the_bridge_keeps_its_address_whatever_taps_join_or_leave_it(netns: str, workdir: tuple[Path, Path]) -> None:
    """A bridge takes the lowest of its ports' MACs unless it has one of its own: then a TAP joining it
    would change the gateway's MAC under running guests (their replies lost until ARP catches up)."""
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    reconcile(specs, state)
    address = link_address("wvbr0")
    assert address not in {link_address(t) for t in pool_taps(state)}, "its own, not its port's"
    for size in (6, 2, 9):
        write(specs / "net.yaml", network_spec(size=size))
        reconcile(specs, state)
        assert link_address("wvbr0") == address


def test_pool_grows_and_shrinks_to_its_target(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=3))
    reconcile(specs, state)
    write(specs / "net.yaml", network_spec(size=12))
    reconcile(specs, state)
    assert len(pool_taps(state)) == 12
    write(specs / "net.yaml", network_spec(size=2))  # 10 surplus: deleted by device group
    reconcile(specs, state)
    assert len(pool_taps(state)) == 2
    write(specs / "net.yaml", network_spec(size=1))  # one surplus: a single delete
    reconcile(specs, state)
    assert len(pool_taps(state)) == 1


def test_vm_takes_an_idle_tap_and_gives_it_back(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2))
    reconcile(specs, state)
    idle_before = set(pool_taps(state))
    write(specs / "vm.yaml", vm_spec("vm-a"))
    out = reconcile(specs, state)
    held = [n for n, l in links().items() if l.alias == str(vm_mark(instance(state), "default", "vm-a"))]
    assert len(held) == 1 and held[0] in idle_before, "the VM must take a warm TAP, not a new one"
    assert "from=pool" in out.stderr
    assert len(pool_taps(state)) == 2, "the pool is refilled"
    # shrink the pool so the returning TAP fits: it goes back idle instead of being deleted
    write(specs / "net.yaml", network_spec(size=3))
    (specs / "vm.yaml").unlink()
    out = reconcile(specs, state)
    assert held[0] in pool_taps(state) and "to=pool" in out.stderr
    assert len(pool_taps(state)) == 3


def test_vm_tap_is_deleted_when_the_pool_is_full(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=1))
    write(specs / "vm.yaml", vm_spec("vm-a"))
    reconcile(specs, state)
    held = [n for n, l in links().items() if l.alias == str(vm_mark(instance(state), "default", "vm-a"))]
    (specs / "vm.yaml").unlink()
    reconcile(specs, state)
    assert held[0] not in links()
    assert len(pool_taps(state)) == 1


def test_vm_without_pool_gets_a_new_tap(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=0))
    write(specs / "vm.yaml", vm_spec("vm-a"))
    out = reconcile(specs, state)
    assert "from=new" in out.stderr
    assert [l.name for l in links().values() if l.alias == str(vm_mark(instance(state), "default", "vm-a"))]


def test_foreign_devices_with_pool_names_are_never_touched(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    # a persistent idle foreign TAP (pyroute2's own tuntap add would silently take it over),
    # a foreign non-TAP device, and a foreign TAP carrying a look-alike but wrong mark
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", "tap-pool-0"], check=True)
    subprocess.run(["ip", "link", "add", "tap-pool-1", "type", "bridge"], check=True)
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", "tap-pool-7"], check=True)
    subprocess.run(["ip", "link", "set", "tap-pool-7", "alias", "warmvm:poolish"], check=True)
    before = {n: links()[n] for n in ("tap-pool-0", "tap-pool-1", "tap-pool-7")}
    write(specs / "net.yaml", network_spec(size=4))
    reconcile(specs, state)
    ours = pool_taps(state)
    assert len(ours) == 4 and not set(ours) & set(before)
    write(specs / "net.yaml", network_spec(size=0))
    reconcile(specs, state)
    after = links()
    for name, link in before.items():
        assert after[name] == link, f"foreign {name} was changed"
    assert not pool_taps(state)


def _allocate(count: int, queue: multiprocessing.Queue, owner: str) -> None:  # type: ignore[type-arg]
    driver = NetworkDriver(owner)
    driver.prepare(Observed(net=observe_net(owner)))  # both start from the same snapshot
    names = driver.create_taps("tap-pool-", count, pool_mark(owner, "default"), "wvbr0")
    queue.put((names, driver.name_calls))
    driver.close()


def test_racing_allocators_never_share_a_name(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=0))
    reconcile(specs, state)
    ctx = multiprocessing.get_context("fork")  # forked children stay in this namespace
    queue = ctx.Queue()
    procs = [ctx.Process(target=_allocate, args=(60, queue, instance(state))) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    names = [n for got, _ in results for n in got]
    assert len(names) == 180 and len(set(names)) == 180
    assert set(pool_taps(state)) == set(names)
    assert sum(calls for _, calls in results) > 180, "the race should have been contested"


def test_restart_rebuilds_the_allocator_from_what_it_sees(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=5))
    reconcile(specs, state)
    first = set(pool_taps(state))
    write(specs / "net.yaml", network_spec(size=9))
    reconcile(specs, state)  # a new process: its allocator comes from the dump alone
    names = set(pool_taps(state))
    assert len(names) == 9 and first <= names
    assert max(int(n.rsplit("-", 1)[1]) for n in first) < min(int(n.rsplit("-", 1)[1]) for n in names - first)


def test_drifted_tap_is_reattached(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=2))
    reconcile(specs, state)
    name = sorted(pool_taps(state))[0]
    subprocess.run(["ip", "link", "set", name, "nomaster", "down"], check=True)
    out = reconcile(specs, state)
    assert "tap_attach" in out.stderr
    link = links()[name]
    assert link.master == links()["wvbr0"].index and link.up


def test_foreign_bridge_with_our_name_is_left_alone(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    subprocess.run(["ip", "link", "add", "wvbr0", "type", "bridge"], check=True)
    write(specs / "net.yaml", network_spec(size=2))
    result = warmvm(specs, state, "reconcile")
    assert result.returncode == 1
    assert "not owned by warmvm" in result.stderr
    assert links()["wvbr0"].alias is None and not pool_taps(state)


def test_removed_network_loses_its_taps_and_bridge(netns: str, workdir: tuple[Path, Path]) -> None:
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=3))
    reconcile(specs, state)
    (specs / "net.yaml").unlink()
    reconcile(specs, state)
    assert "wvbr0" not in links() and not pool_taps(state)


def test_kill_during_warm_up_leaves_no_unmarked_tap(netns: str, workdir: tuple[Path, Path]) -> None:
    """TAPs are marked before they are made persistent: a kill -9 at any point leaves only marked ones."""
    specs, state = workdir
    write(specs / "net.yaml", network_spec(size=900))
    proc = subprocess.Popen(command(specs, state, "reconcile"), cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(tap_names()) >= 300, timeout=30, interval=0.002)  # two batches of 128 persisted
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    taps = {n: l for n, l in links().items() if n.startswith("tap-pool-")}
    assert 0 < len(taps) < 900, "the kill should land in the middle of the warm-up"
    # a batch held open at the kill vanished with the process; what was persisted was marked first
    assert all(l.alias == str(pool_mark(instance(state), "default")) and l.master is not None for l in taps.values())
    reconcile(specs, state)
    assert len(pool_taps(state)) == 900
