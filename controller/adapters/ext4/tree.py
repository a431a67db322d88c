"""A directory tree or an image's whole tree as one value: what the tests and the seed checks compare."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .clone import as_raw
from .image import extract_dir

# Path (relative, posix) -> file content (bytes), symlink target (str) or None (directory).
Tree = dict[str, bytes | str | None]


def read_dir_tree(root: Path) -> Tree:
    """The Tree of a host directory, to compare with read_tree()."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            p = base / name
            key = p.relative_to(root).as_posix()
            if p.is_symlink():
                tree[key] = os.readlink(p)
            elif p.is_dir():
                tree[key] = None
            else:
                tree[key] = p.read_bytes()
    return tree


def read_tree(disk: Path) -> Tree:
    """All files of the ext4 in disk (raw or qcow2), without lost+found; for tests and checks."""
    with as_raw(disk) as raw, tempfile.TemporaryDirectory(prefix="warmvm-tree-") as d:
        extract_dir(raw, "/", Path(d) / "t")
        tree = read_dir_tree(Path(d) / "t")
    return {k: v for k, v in tree.items() if k != "lost+found" and not k.startswith("lost+found/")}
