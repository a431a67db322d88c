"""Network planning: bridges, the warm TAP pool and the guests' containment. Pure.

Per network, keep the bridge up with its gateway, keep exactly `size` idle
TAPs attached to it (ports isolated from each other with `isolateVMs`), hand
idle TAPs to VMs (a new one only when the pool is empty), take them back
when a VM goes, and delete what is surplus. Devices of networks whose spec
went are torn down, TAPs first, then the bridge.

Containment (firewall.py): every TAP of ours is in our bridge table, a
VM's with its recorded MAC and IP, any other's as a port that sends nothing;
every bridge of ours is in our inet table (hostfilter.py), with the ports
its network opens on its gateway and whether it has egress. Both tables are
synced whole when either differs, before anything else in the pass. A VM
with an image takes its TAP only once its lease (its record) is observed,
so the sync that names it on its TAP comes first, and its guest never
starts behind a port that drops it.
"""

from __future__ import annotations

from ipaddress import IPv4Interface

from ..base.actions import Action
from ..base.kinds import Egress, Ref, Role
from ..base.model import VM, Desired, Network
from .actions import (
    IP_FORWARD,
    BridgeDelete,
    BridgeEnsure,
    DeviceAdopt,
    FirewallDelete,
    FirewallSync,
    ForwardingEnable,
    PoolGrow,
    PoolShrink,
    TapAttach,
    TapClaim,
    TapRelease,
)
from .firewall import Guest, Ruleset
from .hostfilter import Allowed, HostRules
from .state import NetState, NetworkView, TapState


def plan_networks(desired: Desired, observed: NetworkView) -> tuple[list[Action], list[str]]:
    """Actions converging bridges and TAPs, and the problems no action can fix. A VM whose QEMU
    still runs keeps its TAP until it has stopped."""
    # a VM whose records cannot be read keeps its TAP, like a running one: nothing is taken from it
    networks, vms, state, running = desired.networks, desired.vms, observed.net, observed.running | observed.broken_vms
    actions: list[Action] = []
    problems: list[str] = []
    held = state.vm_taps()
    # with containment observed, a VM with an image waits for its lease before it takes a TAP
    leases = observed.leases
    waiting = frozenset(v.name for v in vms.values() if v.image is not None and _contained(state) and not (
        v.name in leases and leases[v.name].network == v.network))
    for net in networks.values():
        adopt = _adoptions(net, state, observed)
        if adopt:
            actions += adopt  # the rest of this network is planned once they are ours
            continue
        acts, probs = _plan_network(net, vms, state, held, running, waiting)
        actions += acts
        problems += probs
    actions += _plan_orphans(networks, vms, state, held, running)
    acts, probs = _plan_firewall(desired, observed, [a for a in actions if isinstance(a, TapClaim)])
    return acts + actions, problems + probs


def _contained(state: NetState) -> bool:
    return state.firewall is not None and state.firewall.error is None


def _adoptions(net: Network, state: NetState, observed: NetworkView) -> list[Action]:
    """Devices of this network marked before marks named their instance, that this instance's spec
    (the bridge) or records (a VM's TAP) name, or that hang on such a bridge (pool TAPs)."""
    bridge = state.bridges.get(net.bridge)
    adopt: list[Action] = []
    if bridge is not None and bridge.owner is None and bridge.legacy == net.name:
        adopt.append(DeviceAdopt(net.name, bridge.name, Role.BRIDGE))
    ours = bridge is not None and (bridge.owner == net.name or bridge.legacy == net.name)
    for tap in state.legacy:
        if tap.mark.network != net.name:
            continue
        if tap.mark.vm is not None:
            lease = observed.leases.get(tap.mark.vm)
            if lease is not None and lease.network == net.name:
                adopt.append(DeviceAdopt(net.name, tap.name, Role.VM, tap.mark.vm))
        elif ours and bridge is not None and tap.master == bridge.index:
            adopt.append(DeviceAdopt(net.name, tap.name, Role.POOL))
    return adopt


def _plan_network(net: Network, vms: dict[str, VM], state: NetState, held: dict[str, TapState],
                  running: frozenset[str], waiting: frozenset[str]) -> tuple[list[Action], list[str]]:
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
    isolate = True if net.isolate_vms else None  # None: new ports as the kernel makes them, not isolated
    for tap in idle + [held[v] for v in sorted(held) if held[v].mark.network == net.name]:
        if bridge is not None and (tap.master != bridge.index or not tap.up or tap.isolated != net.isolate_vms):
            # re-attached to the same bridge, a port keeps its flags: set them either way when they drifted
            actions.append(TapAttach(net.name, net.bridge, tap.name, tap.mark.vm,
                                     net.isolate_vms if tap.isolated != net.isolate_vms else isolate))
    for vm in sorted((v for v in vms.values() if v.network == net.name), key=lambda v: v.name):
        if (vm.name in held and held[vm.name].mark.network == net.name) or vm.name in waiting:
            continue
        warm = idle.pop(0).name if idle else None
        actions.append(TapClaim(vm.name, net.name, net.bridge, net.pool_prefix, warm, isolate))
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
        actions.append(PoolGrow(net.name, net.bridge, net.pool_prefix, room - returning, isolate))
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


def _plan_firewall(desired: Desired, observed: NetworkView,
                   claims: list[TapClaim]) -> tuple[list[Action], list[str]]:
    """Our tables, synced when they differ from what our TAPs (with this pass's claims) and networks
    want, and deleted when no TAP of ours is left. Releases and deletions are not anticipated: they
    may be held back, and the TAPs they free belong to stopped VMs, which send nothing."""
    fw = observed.net.firewall
    if fw is None:
        return [], []
    problems: list[str] = []
    wanted = _wanted_rules(observed, claims, problems)
    if fw.error is not None:
        return [], problems + ([f"firewall/{fw.table}: {fw.error}; guests are not contained"] if wanted else [])
    if wanted is None:
        return ([FirewallDelete(fw.table)] if fw.present else []), problems
    host = _wanted_host(desired, observed.net)
    actions: list[Action] = []
    if fw.rules != wanted or fw.host != host:
        actions.append(FirewallSync(fw.table, wanted, host))
    nat = tuple(sorted(n.name for n in desired.networks.values() if n.bridge in host.egress))
    if nat and fw.forwarding is not True:
        actions.append(ForwardingEnable(IP_FORWARD, nat))
    return actions, problems


def _wanted_host(desired: Desired, state: NetState) -> HostRules:
    """Every bridge of ours is contained: a network's with the ports it opens and its egress, one no
    network names (its spec went, or names another bridge) with nothing; while specs are invalid,
    such a bridge keeps what is installed for it (the broken file may still describe its network)."""
    fw = state.firewall
    installed = fw.host if fw is not None and fw.host is not None else HostRules()
    bridges: set[str] = set()
    allowed: set[Allowed] = set()
    egress: set[str] = set()
    for net in desired.networks.values():
        bridge = state.bridges.get(net.bridge)
        if (bridge is not None and bridge.owner != net.name) or (bridge is None and net.bridge in state.names):
            continue  # not ours (a problem of its own), or to be adopted first
        bridges.add(net.bridge)
        allowed |= {Allowed(net.bridge, str(net.gateway), port) for port in net.host_ports}
        if net.egress == Egress.NAT:
            egress.add(net.bridge)
    for bridge in state.bridges.values():
        if bridge.owner and bridge.name not in bridges:
            bridges.add(bridge.name)
            if not desired.complete:
                allowed |= {a for a in installed.allowed if a.bridge == bridge.name}
                egress |= installed.egress & {bridge.name}
    return HostRules(frozenset(bridges), frozenset(allowed), frozenset(egress))


def _wanted_rules(observed: NetworkView, claims: list[TapClaim], problems: list[str]) -> Ruleset | None:
    """A guest identity per TAP held by a VM whose lease on the TAP's network is observed; every other
    TAP of ours sends nothing. A VM whose records cannot be read keeps what is installed for it."""
    taps = {t.name: (t.mark.network, t.mark.vm) for t in observed.net.taps}
    taps.update({c.tap: (c.network, c.vm) for c in claims if c.tap is not None})
    if not taps:
        return None
    fw = observed.net.firewall
    installed = {g.port: g for g in fw.rules.guests} if fw is not None and fw.rules is not None else {}
    guests: set[Guest] = set()
    drop: set[str] = set()
    for port, (network, vm) in taps.items():
        lease = observed.leases.get(vm) if vm else None
        if lease is not None and lease.network == network:
            guest = Guest(port, lease.mac.lower(), lease.ip)
            if guest.valid:
                guests.add(guest)
                continue
            problems.append(f"{Ref.vm(vm or '')}: its record's MAC {guest.mac!r} or IP {guest.ip!r} is not valid; "
                            f"its TAP {port} sends nothing")
            drop.add(port)
        elif vm in observed.broken_vms and port in installed:
            guests.add(installed[port])
        else:
            drop.add(port)
    return Ruleset(frozenset(drop), frozenset(guests))
