"""nftables through its own command line: list one table, list the tables, apply a script.

The library the network observer and driver use for guest containment
(firewall.py has the ruleset as data, its text and its parser). One `nft`
process per call, a few ms; it runs in the calling thread's network
namespace. Failures are OSError naming what failed in one line: ENOENT when
nft is not installed, the first line nft printed otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

SEARCH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))  # nft lives in sbin
TIMEOUT = 30.0


class NftError(OSError):
    """nft ran and refused: errno ENOENT for an object that does not exist, else EPERM or EINVAL."""


def list_table(family: str, table: str) -> str | None:
    """`nft -j list table FAMILY TABLE`: its JSON, or None when there is no such table."""
    try:
        return _run(["-j", "list", "table", family, table])
    except NftError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def list_tables() -> str:
    """`nft -j list tables`: every family's tables (their names only), as JSON."""
    return _run(["-j", "list", "tables"])


def apply(script: str) -> None:
    """Runs an nft script as one transaction: all of it applies, or none."""
    _run(["-f", "-"], script)


def _run(args: list[str], script: str | None = None) -> str:
    exe = shutil.which("nft", path=SEARCH)
    if exe is None:
        raise OSError(errno.ENOENT, "nft is not installed (Debian package nftables; hack/install-deps.sh)")
    try:
        if script is None:
            proc = subprocess.run([exe, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=TIMEOUT, check=False)
        else:
            proc = subprocess.run([exe, *args], input=script, capture_output=True, text=True, timeout=TIMEOUT,
                                  check=False)
    except subprocess.TimeoutExpired:
        raise OSError(errno.ETIMEDOUT, f"nft {' '.join(args)}: no answer in {TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        first = next((line.strip() for line in proc.stderr.splitlines() if line.strip()), f"exit {proc.returncode}")
        code = errno.ENOENT if "No such file or directory" in first else errno.EPERM \
            if "Operation not permitted" in first else errno.EINVAL
        raise NftError(code, f"nft {' '.join(args[:3])}: {first.removeprefix('Error: ')}")
    return proc.stdout
