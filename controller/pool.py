"""The warm TAP pool: planning it (pure) and allocating its names.

Planning: per network, keep the bridge up with its gateway, keep exactly
`size` idle TAPs attached to it, hand idle TAPs to VMs (a new one only when the
pool is empty), take them back when a VM goes, and delete what is surplus.

Naming: one dump gives the set of used indices; new names go past the highest
(fresh names, never a just-released one, which a racing user of the old name
could still hold), and a name that turns out taken moves the cursor a random
jump ahead, so racing allocators stop colliding. No name is ever probed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from ipaddress import IPv4Interface

from .actions import Action, BridgeDelete, BridgeEnsure, PoolGrow, PoolShrink, TapAttach, TapClaim, TapRelease
from .model import VM, Network
from .netstate import NetState, TapState
from .schema import IFNAMSIZ

MAX_JUMP = 32


class NameAllocator:
    """Hands out `prefix + index` names not in the observed set; pure but for its RNG."""

    def __init__(self, prefix: str, used_names: Iterable[str], rng: random.Random | None = None) -> None:
        self.prefix = prefix
        self.limit = 10 ** (IFNAMSIZ - len(prefix.encode()))
        self.used = {i for i in (self._index(n) for n in used_names) if i is not None}
        self.cursor = max(self.used, default=-1) + 1
        self.rng = rng or random.Random()

    def _index(self, name: str) -> int | None:
        tail = name[len(self.prefix):]
        if name.startswith(self.prefix) and tail.isdigit() and str(int(tail)) == tail:
            return int(tail)
        return None

    def propose(self) -> str:
        """The next free name; raises LookupError when every index is in use."""
        if len(self.used) >= self.limit:
            raise LookupError(f"every {self.prefix}N name is in use")
        if self.cursor >= self.limit:
            self.cursor = 0  # wrapped: from here on, the lowest free index
        while self.cursor in self.used:
            self.cursor = (self.cursor + 1) % self.limit
        index = self.cursor
        self.used.add(index)
        self.cursor += 1
        return f"{self.prefix}{index}"

    def taken(self, name: str) -> None:
        """`name` was taken by someone else between our dump and our create."""
        self.cursor += self.rng.randint(0, MAX_JUMP)


def plan_networks(networks: dict[str, Network], vms: dict[str, VM], state: NetState,
                  running: frozenset[str] = frozenset()) -> tuple[list[Action], list[str]]:
    """Actions converging bridges and TAPs, and the problems no action can fix.

    `running`: VMs whose QEMU still holds their TAP (it is released once they stop).
    """
    actions: list[Action] = []
    problems: list[str] = []
    held = state.vm_taps()
    for net in networks.values():
        acts, probs = _plan_network(net, vms, state, held, running)
        actions += acts
        problems += probs
    actions += _plan_orphans(networks, vms, state, held, running)
    return actions, problems


def _plan_network(net: Network, vms: dict[str, VM], state: NetState, held: dict[str, TapState],
                  running: frozenset[str]) -> tuple[list[Action], list[str]]:
    bridge = state.bridges.get(net.bridge)
    if bridge is not None and bridge.owner != net.name:
        return [], [f"network/{net.name}: bridge {net.bridge!r} exists and is not owned by warmvm; not touching it"]
    if bridge is None and net.bridge in state.names:
        return [], [f"network/{net.name}: {net.bridge!r} is taken by a device that is not a bridge"]
    gateway = IPv4Interface(f"{net.gateway}/{net.cidr.prefixlen}")
    actions: list[Action] = []
    if bridge is None or not bridge.up or str(gateway) not in bridge.addresses:
        actions.append(BridgeEnsure(net.name, net.bridge, gateway))
    idle = state.idle_taps(net.name)
    for tap in idle + [held[v] for v in sorted(held) if held[v].mark.network == net.name]:
        if bridge is not None and (tap.master != bridge.index or not tap.up):
            actions.append(TapAttach(net.name, net.bridge, tap.name, tap.mark.vm))
    for vm in sorted((v for v in vms.values() if v.network == net.name), key=lambda v: v.name):
        if vm.name in held and held[vm.name].mark.network == net.name:
            continue
        warm = idle.pop(0).name if idle else None
        actions.append(TapClaim(vm.name, net.name, net.bridge, net.pool_prefix, warm))
    room = net.pool_size - len(idle)
    returning = 0  # TAPs of departed VMs still running: they come back once stopped, so no growth for them
    for vm_name, tap in sorted(held.items()):
        if tap.mark.network != net.name or not _gone(vm_name, net.name, vms):
            continue
        if vm_name in running:
            returning += 1
            continue
        actions.append(TapRelease(vm_name, net.name, net.bridge, tap.name, keep=room > 0))
        room -= room > 0
    if room - returning > 0:
        actions.append(PoolGrow(net.name, net.bridge, net.pool_prefix, room - returning))
    elif room < 0:
        actions.append(PoolShrink(net.name, tuple(t.name for t in idle[room:])))
    return actions, []


def _gone(vm_name: str, network: str, vms: dict[str, VM]) -> bool:
    """The VM left `network`: its spec went, or it moved to another network."""
    vm = vms.get(vm_name)
    return vm is None or vm.network != network


def _plan_orphans(networks: dict[str, Network], vms: dict[str, VM], state: NetState,
                  held: dict[str, TapState], running: frozenset[str]) -> list[Action]:
    """Devices of networks whose spec went: TAPs deleted, then the emptied bridge."""
    actions: list[Action] = []
    for vm_name, tap in sorted(held.items()):
        if tap.mark.network not in networks and _gone(vm_name, tap.mark.network, vms) and vm_name not in running:
            actions.append(TapRelease(vm_name, tap.mark.network, "", tap.name, keep=False))
    for network in sorted({t.mark.network for t in state.taps} - set(networks)):
        idle = tuple(t.name for t in state.idle_taps(network))
        if idle:
            actions.append(PoolShrink(network, idle))
    for bridge in state.bridges.values():
        if bridge.owner and bridge.owner not in networks and bridge.ports == 0 and \
                not any(t.mark.network == bridge.owner for t in state.taps):
            actions.append(BridgeDelete(bridge.owner, bridge.name))
    return actions
