"""The uids QEMU runs as: one of its own per VM, from a block reserved for this instance. Pure.

A guest that escapes into its QEMU holds that uid and nothing else: no other VM's QEMU runs as it, so
it cannot signal, trace or read another (the kernel's own checks, whatever the seccomp filter allows).
The blocks lie between systemd's container range (up to 0x6FFFFFFF) and its foreign range
(0x7FFE0000), where no distribution allocates: 4094 blocks of 65536, one per instance, chosen by a
digest of its identity, so that two state directories on one host draw from different blocks (two
instances share one with a chance of 1 in 4094; `doctor` names a named account found in the block).
The first uid of a block is its templates' (one runs at a time, under the state's lock); the others
are leased to VMs and recorded in their vm.json, like their address.
"""

from __future__ import annotations

import hashlib

FIRST = 0x70000000
BLOCK = 1 << 16
BLOCKS = (0x7FFE0000 - FIRST) // BLOCK


def block(instance: str) -> range:
    index = int.from_bytes(hashlib.sha256(instance.encode()).digest()[:4], "big") % BLOCKS
    start = FIRST + index * BLOCK
    return range(start, start + BLOCK)


def template_uid(instance: str) -> int:
    return block(instance).start


def vm_uids(instance: str) -> range:
    return block(instance)[1:]


def lease(instance: str, used: set[int]) -> int | None:
    """The lowest uid of the block that no VM holds (a uid comes free only when its VM is gone)."""
    return next((uid for uid in vm_uids(instance) if uid not in used), None)
