"""The options every command takes (before or after its subcommand), their value types, and the
policy they make: what `plan`, `reconcile`, `watch`, `get`, `doctor` and `agent` decide by."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..base.model import Policy


def common(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand; only the top level holds defaults,
    so that a value given before the subcommand is not reset by the subcommand's copy."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--specs", type=Path, default=default(Path(os.environ.get("WARMVM_SPECS", "specs"))),
                        help="spec directory (default ./specs, or $WARMVM_SPECS)")
    common.add_argument("--state", type=Path, default=default(Path(os.environ.get("WARMVM_STATE", "state"))),
                        help="state directory (default ./state, or $WARMVM_STATE)")
    common.add_argument("--log-format", choices=("text", "json"), default=default("text"))
    common.add_argument("--clone-method", choices=("auto", "reflink", "qcow2", "sparse"),
                        default=default(os.environ.get("WARMVM_CLONE_METHOD", "auto")),
                        help="how work disks clone a seed (default: the best the state directory supports)")
    common.add_argument("--boot-timeout", type=float, metavar="SECONDS",
                        default=default(float(os.environ.get("WARMVM_BOOT_TIMEOUT", "60"))),
                        help="how long a boot may take to answer SSH before it is killed and retried (default 60)")
    common.add_argument("--lock-timeout", type=float, default=default(5.0), metavar="SECONDS",
                        help="how long to wait for another reconciler (default 5)")
    common.add_argument("--retain-removed", type=duration, metavar="DURATION",
                        default=default(duration(os.environ.get("WARMVM_RETAIN_REMOVED", "24h"))),
                        help="how long a removed VM's disk is kept in the trash, e.g. 24h, 90m, 0 "
                             "(default 24h; 0 deletes it at once)")
    common.add_argument("--confirm-removals", action="store_true", default=default(False),
                        help="apply a pass that removes more than half of the VMs (held back otherwise)")
    common.add_argument("--disk-overcommit", type=ratio, metavar="RATIO",
                        default=default(os.environ.get("WARMVM_DISK_OVERCOMMIT", "1")),
                        help="work disks' sizes may add up to RATIO times the room the state's file system "
                             "has for them (default 1: every guest may fill its disk)")
    return common


def policy(args: argparse.Namespace) -> Policy:
    return Policy(args.retain_removed, args.confirm_removals, args.disk_overcommit)


def ratio(text: str) -> float:
    """A positive number: 1, 1.5, 10."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 1, 1.5, 10)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number greater than 0")
    return value


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `24h` or `7d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 24h, 90m, 0)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return value


