"""Whether a directory can be trusted by a root daemon, the way sshd's StrictModes decides.

A directory decides which files a guest receives (specs) or holds what the
daemon writes and executes against (state). Another user who can write it,
or any directory on its path, can replace what is in it: so each must be
owned by root (or by us) and writable by no one else, a root-owned sticky
directory such as /tmp excepted (others cannot replace its entries).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def unsafe_reason(path: Path) -> str | None:
    """Why `path` (a directory, or a file) cannot be trusted, or None. Missing parts are skipped:
    they will be made by us."""
    me = os.geteuid()
    target = Path(os.path.abspath(path))
    for part in [target, *target.parents]:
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            continue
        except OSError as e:
            return f"{part}: cannot inspect: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(part)  # a link we follow must lead somewhere as safe
        if st.st_uid not in (0, me):
            return f"{part} is owned by uid {st.st_uid}, not by root"
        sticky_root = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0
        if st.st_mode & 0o022 and not (sticky_root and part != target):
            who = {0o022: "group and others", 0o020: "group", 0o002: "others"}[st.st_mode & 0o022]
            return f"{part} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
