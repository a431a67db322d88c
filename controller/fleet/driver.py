"""The fleet's writes to the store, each one transaction guarded by what was read.

Placement compares the host's allocation, its presence, the VM's spec and the absence of a
placement: of racing placers one wins, the others read again. Deleting a VM takes its spec, its
placement and its reservation in one transaction. `fleet apply` writes each spec guarded by the
revision it read (a concurrent change is detected, not overwritten). A host writes its own
presence, description and statuses, each only when it changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..adapters.etcd import Compare, Delete, Etcd, Put
from ..base import records
from ..base.errors import PermanentError, TemporaryError
from . import keys
from .observe import read_fleet
from .plan import Choice, lost_marks, place, place_all, placement_of, to_recreate, unplaced, with_placed
from .state import Alloc, Fleet, SpecObject

ATTEMPTS = 8  # reads again after a lost race before a placer leaves the rest to the next round
BATCH = 120  # VMs placed on one host by one transaction (a compare and a put each: etcd 3.4 allows 128)
CHUNK = 100  # specs per transaction (etcd 3.4 allows 128 operations in one)


def encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def encode_record(value: object) -> bytes:
    return encode(records.to_dict(value))


def guard(key: str, revision: int) -> Compare:
    """The key is as it was read: at that revision, or still absent."""
    return Compare(key, "MOD", revision) if revision else Compare(key, "VERSION", 0)


@dataclass
class Placed:
    placed: int = 0
    conflicts: int = 0
    pending: int = 0


def place_pending(etcd: Etcd, order: Callable[[list[SpecObject]], list[SpecObject]] | None = None,
                  fleet: Fleet | None = None) -> Placed:
    """Places every VM that has no placement yet: the VMs going to one host in one guarded
    transaction (BATCH at a time); after a lost race, reads again and places what is left. A VM that
    fits nowhere gets its reason under /warmvm/pending/ (written only when it changed)."""
    fleet = fleet or read_fleet(etcd)
    done = Placed()
    for _ in range(ATTEMPTS):
        todo = unplaced(fleet)
        batches, nowhere = place_all(fleet, order(todo) if order else todo)
        lost = False
        for host, choices in sorted(batches.items()):
            for start in range(0, len(choices), BATCH):
                chunk = choices[start:start + BATCH]
                won, revision = _place(etcd, fleet, host, chunk)
                if not won:
                    done.conflicts, lost = done.conflicts + 1, True
                    break
                done.placed += len(chunk)
                fleet = with_placed(fleet, chunk, revision)
        if lost:
            fleet = read_fleet(etcd)
            continue
        for vm, reason in nowhere.items():
            _mark_pending(etcd, fleet, vm, reason)
        done.pending = len(nowhere)
        break
    stale = [Delete(keys.pending(vm)) for vm in fleet.pending if vm in fleet.placements]
    for start in range(0, len(stale), BATCH):
        etcd.txn([], stale[start:start + BATCH])  # the reasons of VMs placed since
    return done


def _place(etcd: Etcd, fleet: Fleet, host: str, choices: list[Choice]) -> tuple[bool, int]:
    """One transaction: the host's allocation and presence as read, each VM still unplaced; then every
    placement and the new allocation. (A spec changed meanwhile keeps the reservation made from the one
    read, as a spec changed later does: a VM runs with what it reserved.)"""
    seen = fleet.allocs.get(host)
    alloc = seen.value if seen else Alloc()
    compares = [guard(keys.alloc(host), seen.revision if seen else 0),
                Compare(keys.alive(host), "MOD", fleet.alive[host].revision)]
    writes: list[Put | Delete] = []
    now = time.time()
    for choice in choices:
        alloc = alloc.plus(choice.need)
        compares.append(Compare(keys.placement(choice.vm), "VERSION", 0))
        writes.append(Put(keys.placement(choice.vm), encode_record(placement_of(choice, now))))
    return etcd.txn(compares, [*writes, Put(keys.alloc(host), encode_record(alloc))])


def _mark_pending(etcd: Etcd, fleet: Fleet, vm: str, reason: str) -> None:
    """Why the VM is not placed, written when it changed (and only while it has no placement)."""
    seen = fleet.pending.get(vm)
    if seen is None or seen.value != reason:
        etcd.txn([guard(keys.pending(vm), seen.revision if seen else 0), Compare(keys.placement(vm), "VERSION", 0)],
                 [Put(keys.pending(vm), encode({"reason": reason}))])


def delete_vm(etcd: Etcd, name: str) -> bool:
    """The VM's spec, placement and reservation go in one transaction (its host then removes it, through
    its trash); False if the fleet has no such VM."""
    for _ in range(ATTEMPTS):
        fleet = read_fleet(etcd)
        spec, placed = fleet.specs.get(("VM", name)), fleet.placements.get(name)
        if spec is None and placed is None:
            return False
        compares = [guard(keys.spec("VM", name), spec.revision if spec else 0),
                    guard(keys.placement(name), placed.revision if placed else 0)]
        writes: list[Put | Delete] = [Delete(keys.spec("VM", name)), Delete(keys.placement(name)),
                                      Delete(keys.pending(name))]
        if placed is not None:
            host = placed.value.host
            seen = fleet.allocs.get(host)
            left = (seen.value if seen else Alloc()).minus(placed.value.need)
            compares.append(guard(keys.alloc(host), seen.revision if seen else 0))
            writes.append(Put(keys.alloc(host), encode_record(left)))
        if etcd.txn(compares, writes)[0]:
            return True
    raise TemporaryError(f"vm/{name}: the fleet kept changing under the delete; try again")


def apply_specs(etcd: Etcd, fleet: Fleet, documents: Iterable[tuple[str, str, dict[str, Any]]],
                prune: bool) -> list[str]:
    """Writes each (kind, name, document) whose stored copy (in `fleet`, as read) differs, guarded by the
    revision read; with `prune`, removes the specs no document names. The lines of what changed."""
    wanted = {(kind, name): document for kind, name, document in documents}
    changed: list[tuple[str, str, bytes, int]] = []
    for (kind, name), document in sorted(wanted.items()):
        stored = fleet.specs.get((kind, name))
        if stored is None or stored.document != document:
            changed.append((kind, name, encode(document), stored.revision if stored else 0))
    lines = [f"{kind.lower()}/{name} {'configured' if rev else 'created'}" for kind, name, _, rev in changed]
    for start in range(0, len(changed), CHUNK):
        chunk = changed[start:start + CHUNK]
        won, _ = etcd.txn([guard(keys.spec(k, n), rev) for k, n, _, rev in chunk],
                          [Put(keys.spec(k, n), value) for k, n, value, _ in chunk])
        if not won:
            raise PermanentError(f"a spec changed in the store while it was applied ({start} of {len(changed)} "
                                 "written); nothing of it was overwritten: apply again")
    if prune:
        lines += _prune(etcd, fleet, set(wanted))
    return lines


def _prune(etcd: Etcd, fleet: Fleet, wanted: set[tuple[str, str]]) -> list[str]:
    lines = []
    for (kind, name), stored in sorted(fleet.specs.items()):
        if (kind, name) in wanted:
            continue
        if kind == "VM":
            delete_vm(etcd, name)
        elif not etcd.txn([Compare(keys.spec(kind, name), "MOD", stored.revision)],
                          [Delete(keys.spec(kind, name))])[0]:
            raise PermanentError(f"{kind.lower()}/{name} changed in the store while it was pruned: apply again")
        lines.append(f"{kind.lower()}/{name} pruned")
    return lines


def mark_lost(etcd: Etcd, fleet: Fleet, now: float) -> None:
    """Since when each host without its presence has been lost (written once, while it is); the mark of a
    host back goes."""
    fresh, back = lost_marks(fleet)
    for host in fresh:
        etcd.txn([Compare(keys.alive(host), "VERSION", 0), Compare(keys.lost(host), "VERSION", 0)],
                 [Put(keys.lost(host), encode({"since": now}))])
    for host in back:
        etcd.txn([Compare(keys.lost(host), "MOD", fleet.lost[host].revision)], [Delete(keys.lost(host))])


def move(etcd: Etcd, fleet: Fleet, vm: str, exclude: str | None = None) -> str:
    """Places a placed VM anew on another host, as a new VM (its epoch one more): one transaction that
    compares its placement and both hosts' allocations. The host it went to; TemporaryError if it
    fits nowhere or the fleet changed meanwhile."""
    placed, spec = fleet.placements[vm], fleet.specs.get(("VM", vm))
    if spec is None:
        raise PermanentError(f"vm/{vm}: no such VM in the fleet")
    old = placed.value.host
    others = replace(fleet, hosts={h: i for h, i in fleet.hosts.items() if h not in (old, exclude)})
    choice = place(others, spec)
    if isinstance(choice, str):
        raise TemporaryError(f"vm/{vm}: {choice}")
    seen_old, seen_new = fleet.allocs.get(old), fleet.allocs.get(choice.host)
    moved = placement_of(choice, time.time(), placed.value.epoch + 1)
    compares = [Compare(keys.placement(vm), "MOD", placed.revision),
                guard(keys.alloc(old), seen_old.revision if seen_old else 0),
                guard(keys.alloc(choice.host), seen_new.revision if seen_new else 0),
                Compare(keys.alive(choice.host), "MOD", fleet.alive[choice.host].revision)]
    writes: list[Put | Delete] = [
        Put(keys.placement(vm), encode_record(moved)),
        Put(keys.alloc(old), encode_record((seen_old.value if seen_old else Alloc()).minus(placed.value.need))),
        Put(keys.alloc(choice.host), encode_record((seen_new.value if seen_new else Alloc()).plus(choice.need)))]
    if not etcd.txn(compares, writes)[0]:
        raise TemporaryError(f"vm/{vm}: the fleet changed while it was moved; try again")
    return choice.host


def recreate_lost(etcd: Etcd, fleet: Fleet, now: float) -> tuple[list[str], float | None]:
    """Every `recreate` VM whose host has been lost for its lostAfter, placed anew elsewhere (a new VM,
    from its image's seed): the lines of what moved, and when the next one is due (None: none waits)."""
    lines = []
    due, later = to_recreate(fleet, now)
    for spec in due:
        try:
            lines.append(f"vm/{spec.name}: recreated on {move(etcd, fleet, spec.name)}")
        except TemporaryError as e:
            lines.append(str(e))
        fleet = read_fleet(etcd)
    return lines, later


def cordon(etcd: Etcd, host: str, on: bool) -> None:
    if on:
        etcd.txn([Compare(keys.cordon(host), "VERSION", 0)], [Put(keys.cordon(host), encode({"since": time.time()}))])
    else:
        etcd.txn([], [Delete(keys.cordon(host))])
