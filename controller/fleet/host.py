"""A host's share on its disk: the spec files its daemon converges on, and the incarnation of each of
its VMs.

A VM placed anew (its epoch grown: recreated after its host was lost, drained, evicted) is a new
VM, with a fresh disk from its image's seed. So when a host holds a VM of an older epoch than its
placement says, that copy goes first (its spec leaves the share: the daemon stops it and moves its
directory to the trash), and its trashed directories are renamed `VM-eEPOCH.TIME`: kept for the
retention like any trash, never restored as the new VM. Only then does the new one enter the share.
The epoch each local VM was made for is kept in state/fleet/epochs.json.
"""

from __future__ import annotations

import re

from ..statedir.layout import TRASH, Layout
from ..statedir.store import atomic_write, read_json, write_json


class ShareFiles:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.dir = layout.fleet_specs
        self.book = layout.fleet_specs.parent / "epochs.json"

    def write(self, files: dict[str, str], epochs: dict[str, int]) -> bool:
        """The share's files, each replaced whole where it changed, those of objects no longer in the
        share removed; `epochs`: the placement epoch of each VM in it. Whether anything changed."""
        files = self._incarnations(files, epochs)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        present = {p.name: p for p in self.dir.glob("*.yaml")}
        changed = False
        for name, text in files.items():
            if name not in present or present[name].read_text() != text:
                # written beside it (hidden, not *.yaml): the daemon's passes clean the state's tmp area
                atomic_write(self.dir / name, text.encode(), self.dir)
                changed = True
        for name, path in present.items():
            if name not in files:
                path.unlink()
                changed = True
        return changed

    def _incarnations(self, files: dict[str, str], epochs: dict[str, int]) -> dict[str, str]:
        known = {k: int(v) for k, v in (read_json(self.book) or {}).items()}
        book = dict(known)
        out = dict(files)
        for vm, epoch in sorted(epochs.items()):
            was = known.get(vm)
            if was is not None and epoch > was:
                if self.layout.vm(vm).directory.exists():
                    out.pop(f"vm-{vm}.yaml", None)  # the older copy goes first
                    continue
                self._retire(vm, was)
            book[vm] = epoch
        if book != known:
            write_json(self.book, book, self.layout.tmp)
        return out

    def _retire(self, vm: str, epoch: int) -> None:
        """The trashed directories of `vm` are an older incarnation's: renamed so that none is restored."""
        for entry in sorted(self.layout.trash.iterdir()) if self.layout.trash.is_dir() else []:
            m = TRASH.match(entry.name)
            if m and m.group(1) == vm:
                entry.rename(entry.with_name(f"{_retired(vm, epoch)}.{m.group(3)}"))


def _retired(vm: str, epoch: int) -> str:
    suffix = f"-e{epoch}"
    return re.sub(r"-+$", "", vm[:63 - len(suffix)]) + suffix

