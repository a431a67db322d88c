"""Network planning: bridges and the warm TAP pool. Pure.

Per network, keep the bridge up with its gateway, keep exactly `size` idle
TAPs attached to it, hand idle TAPs to VMs (a new one only when the pool is
empty), take them back when a VM goes, and delete what is surplus. Devices
of networks whose spec went are torn down, TAPs first, then the bridge.
"""

from __future__ import annotations

from ipaddress import IPv4Interface

from ..core.actions import Action
from ..core.model import VM, Desired, Network
from ..core.state import Observed
from .actions import BridgeDelete, BridgeEnsure, DeviceAdopt, PoolGrow, PoolShrink, TapAttach, TapClaim, TapRelease
from .state import NetState, TapState


def plan_networks(desired: Desired, observed: Observed) -> tuple[list[Action], list[str]]:
    """Actions converging bridges and TAPs, and the problems no action can fix. A VM whose QEMU
    still runs keeps its TAP until it has stopped."""
    # a VM whose records cannot be read keeps its TAP, like a running one: nothing is taken from it
    networks, vms, state, running = desired.networks, desired.vms, observed.net, observed.running | observed.broken_vms
    actions: list[Action] = []
    problems: list[str] = []
    held = state.vm_taps()
    for net in networks.values():
        adopt = _adoptions(net, state, observed)
        if adopt:
            actions += adopt  # the rest of this network is planned once they are ours
            continue
        acts, probs = _plan_network(net, vms, state, held, running)
        actions += acts
        problems += probs
    actions += _plan_orphans(networks, vms, state, held, running)
    return actions, problems


def _adoptions(net: Network, state: NetState, observed: Observed) -> list[Action]:
    """Devices of this network marked before marks named their instance, that this instance's spec
    (the bridge) or records (a VM's TAP) name, or that hang on such a bridge (pool TAPs)."""
    bridge = state.bridges.get(net.bridge)
    adopt: list[Action] = []
    if bridge is not None and bridge.owner is None and bridge.legacy == net.name:
        adopt.append(DeviceAdopt(net.name, bridge.name, "bridge"))
    ours = bridge is not None and (bridge.owner == net.name or bridge.legacy == net.name)
    for tap in state.legacy:
        if tap.mark.network != net.name:
            continue
        if tap.mark.vm is not None:
            vm = observed.vms.get(tap.mark.vm)
            if vm is not None and vm.record.network == net.name:
                adopt.append(DeviceAdopt(net.name, tap.name, "vm", tap.mark.vm))
        elif ours and bridge is not None and tap.master == bridge.index:
            adopt.append(DeviceAdopt(net.name, tap.name, "pool"))
    return adopt


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
