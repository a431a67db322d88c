"""The spec documents `fleet apply` writes: checked exactly as local specs are (every error as
FILE:LINE: FIELD: message), then each document as written, with an image's relative paths made
absolute (they name files on the hosts, which must hold them at that path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base.errors import SpecError
from ..disks.observe import ImageFiles
from ..specs.documents import read_documents, spec_files
from ..specs.load import load
from ..statedir.safety import unsafe_reason

Document = tuple[str, str, dict[str, Any]]  # kind, name, the document
PATHS = ("kernel", "initrd", "rootfs")


def documents(root: Path) -> tuple[list[Document], list[SpecError]]:
    if not root.exists():
        return [], [SpecError(str(root), 1, "", "no such file or directory")]
    for path in [root, *spec_files(root)]:
        reason = unsafe_reason(path)
        if reason is not None:
            return [], [SpecError(str(path), 1, "", f"refused: {reason} (chown root and chmod go-w)")]
    desired = load(root, ImageFiles())
    if desired.errors:
        return [], list(desired.errors)
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
