"""The spec documents `fleet apply` writes: checked exactly as local specs are (every error as
FILE:LINE: FIELD: message), then each document as written, with an image's relative paths made
absolute (they name files on the hosts, which must hold them at that path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..base.errors import SpecError
from ..disks.observe import ImageFiles
from ..specs.documents import Document as SpecDocument
from ..specs.documents import read_documents, spec_files
from ..specs.load import load
from ..statedir.safety import unsafe_reason

Document = tuple[str, str, dict[str, Any]]  # kind, name, the document
PATHS = ("kernel", "initrd", "rootfs")
STORED = "store:"  # how a stored document is named in a check


def documents(root: Path, stored: Sequence[Document] = ()) -> tuple[list[Document], list[SpecError]]:
    """The documents under `root`, checked together with the `stored` ones they join (a VM may name a
    network the store has); the errors are the files' (a stored object is not this apply's to fix)."""
    if not root.exists():
        return [], [SpecError(str(root), 1, "", "no such file or directory")]
    for path in [root, *spec_files(root)]:
        reason = unsafe_reason(path)
        if reason is not None:
            return [], [SpecError(str(path), 1, "", f"refused: {reason} (chown root and chmod go-w)")]
    beside = [SpecDocument(Path(f"{STORED}{kind.lower()}/{name}"), 1, document, {}) for kind, name, document in stored]
    errors = [e for e in load(root, ImageFiles(), beside).errors if not e.file.startswith(STORED)]
    if errors:
        return [], errors
    out: list[Document] = []
    for file in spec_files(root):
        docs, _ = read_documents(file, str(file))
        for doc in docs:
            body = doc.body
            kind, name = body["kind"], body["metadata"]["name"]
            out.append((kind, name, _absolute(body, file.parent) if kind == "Image" else body))
    return out, []


def _absolute(document: dict[str, Any], base: Path) -> dict[str, Any]:
    spec = dict(document.get("spec") or {})
    for field in PATHS:
        if isinstance(spec.get(field), str):
            spec[field] = str((base / spec[field]).resolve())
    seed = spec.get("workSeed")
    if isinstance(seed, dict) and isinstance(seed.get("from"), str) and not seed["from"].startswith("rootfs:"):
        spec["workSeed"] = {**seed, "from": str((base / seed["from"]).resolve())}
    return {**document, "spec": spec}
