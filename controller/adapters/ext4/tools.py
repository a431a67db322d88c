"""Running e2fsprogs' tools and reading image files: the one place their output is judged.

Failures are PermanentError, or TemporaryError when they may pass by themselves
(a full file system). debugfs exits 0 even when a command fails, so its stderr
decides.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from ...base.errors import PermanentError, TemporaryError, os_error

BLOCK = 4096  # every image uses 4 KiB blocks; sizes must be multiples of it
GROUP_BYTES = BLOCK * 8 * BLOCK  # one block group (32768 blocks) = 128 MiB
INODE_RATIO = 16384  # mke2fs's default bytes per inode
INODE_SIZE = 256
FICLONE = 0x40049409  # _IOW(0x94, 9, int)
QCOW2_MAGIC = b"QFI\xfb"
SUPERBLOCK = 1024
EXT4_MAGIC = 0xEF53
BANNER = re.compile(r"^(debugfs|resize2fs|e2fsck) \d+\.\d+")
NOT_FOUND = "File not found by ext2_lookup"


def tool_env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "DEBUGFS_PAGER": "__none__", "PAGER": "cat"}


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not BANNER.match(ln)]
    return lines[-1] if lines else "no message"


def run(args: list[str], path: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, env=tool_env(), check=False)
    except FileNotFoundError as e:
        raise PermanentError(f"{path}: {args[0]} not found: {e}") from e
    if proc.returncode != 0:
        msg = last_line(proc.stderr) if proc.stderr.strip() else last_line(proc.stdout)
        tool_failed(f"{path}: {args[0]} failed (exit {proc.returncode}): {msg}", proc.stdout + proc.stderr)
    return proc


def tool_failed(message: str, output: str) -> None:
    """A tool's failure in the vocabulary: a full file system passes once space is freed."""
    if "No space left on device" in output or "Disk quota exceeded" in output:
        raise TemporaryError(message)
    raise PermanentError(message)


def debugfs(image: Path, cmds: list[str], write: bool = False, allow: str = "") -> str:
    """Runs debugfs commands; it exits 0 even when a command fails, so stderr decides."""
    proc = run(["debugfs", *(["-w"] if write else []), "-f", "-", str(image)], image, "\n".join(cmds) + "\n")
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and not BANNER.match(ln)]
    errors = [ln for ln in errors if not (allow and allow in ln)]
    if errors:
        tool_failed(f"{image}: debugfs failed: {errors[0].strip()}", proc.stderr)  # the first is the cause
    return proc.stdout


def quote(path: str | os.PathLike[str]) -> str:
    s = os.fspath(path)
    if '"' in s or "\n" in s:
        raise PermanentError(f"{s!r}: path not supported by debugfs")
    return f'"{s}"'


def check_size(size: int, path: Path) -> None:
    if size <= 0 or size % BLOCK:
        raise PermanentError(f"{path}: size {size} is not a positive multiple of {BLOCK}")


def read_bytes(path: Path, offset: int, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)
    except OSError as e:
        raise os_error(f"{path}: cannot read", e) from e


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise os_error(f"{path}: cannot stat", e) from e
