"""TAP names: one dump gives the set of used indices, new names go past the highest.

Fresh names, never a just-released one, which a racing user of the old name
could still hold; a name that turns out taken moves the cursor a random jump
ahead, so racing allocators stop colliding. No name is ever probed. Pure but
for its random number generator; the netlink driver owns the kernel calls.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from ..base.errors import PermanentError
from ..base.model import IFNAMSIZ

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
        """The next free name; PermanentError when every index is in use."""
        if len(self.used) >= self.limit:
            raise PermanentError(f"every {self.prefix}N name is in use")
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
