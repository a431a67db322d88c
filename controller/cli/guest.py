"""`warmvm exec VM [--timeout S] -- CMD...`: a command in a VM, over its control channel (no SSH).

The guest's agent runs CMD (an argv, no shell: `-- sh -c '...'` for one) as root in /root, stdin
/dev/null; its stdout and stderr come back as they are written, and its exit code is this
command's. It works while SSH does not (a broken sshd, a full disk of keys), and only while the
VM's QEMU runs. Bounded: the guest's answer to this session must come within HELLO_WAIT, its
output may take OUTPUT_LIMIT bytes, and with --timeout the command is killed at the deadline
(exit 124, as timeout(1)). Closing the channel (a timeout, Ctrl-C, this process killed) kills the
command and its process group in the guest.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from ..adapters import guest
from ..base.errors import WarmvmError
from ..base.events import Lifecycle
from ..statedir.layout import Layout
from ..statedir.store import Store

HELLO_WAIT = 5.0  # seconds the guest's agent has to answer (QEMU serves one client at a time: another waits)
EXIT_TIMEOUT = 124  # as timeout(1)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("exec", parents=[common], help="run a command in a VM over its control channel (no SSH)")
    _options(p)
    p.add_argument("vm")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments")


def _options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="kill the command after this long (exit 124); default: none")
    return p


def _split(args: argparse.Namespace) -> list[str]:
    """The command. Exec's own options may also follow the VM, before the `--` that starts the command
    (argparse drops a `--` that directly follows the VM, so a command is whatever follows otherwise)."""
    rest = list(args.argv)
    if not rest or not rest[0].startswith("--timeout"):
        return rest
    if "--" in rest:
        head, command = rest[:rest.index("--")], rest[rest.index("--") + 1:]
    else:
        end = 1 if "=" in rest[0] else 2
        head, command = rest[:end], rest[end:]
    extra = _options(argparse.ArgumentParser(prog="warmvm exec VM", add_help=False)).parse_args(head)
    args.timeout = extra.timeout
    return command


def cmd_exec(args: argparse.Namespace, log: Lifecycle) -> int:
    command = _split(args)
    if not command or not command[0]:
        raise WarmvmError("exec: no command given (warmvm exec VM -- COMMAND...)")
    if args.timeout is not None and not (0 < args.timeout < math.inf):
        raise WarmvmError(f"exec: --timeout {args.timeout:g}: a number of seconds above 0")
    files = Layout(Store(args.state).root).vm(args.vm)
    if not files.record.exists():
        raise WarmvmError(f"vm/{args.vm}: no such VM in {args.state}")
    start = time.monotonic()
    deadline = start + args.timeout if args.timeout else None
    try:
        channel = guest.open_session(files.ctl, min(deadline or math.inf, start + HELLO_WAIT))
    except guest.NotListening:
        # whether its QEMU runs is what its channel says (not read from its record and /proc: a start-up
        # of its own for a command that takes 10 ms), and a QEMU of an older warmvm has none
        raise WarmvmError(f"vm/{args.vm}: not running (or started by a warmvm without control channels: "
                          "restart it)") from None
    except guest.ChannelError as e:
        raise WarmvmError(f"vm/{args.vm}: {e}") from None
    with channel:
        try:
            return guest.run(channel, command, deadline, _write)
        except guest.ChannelTimeout:
            if deadline is None:
                raise
            print(f"warmvm: vm/{args.vm}: timed out after {args.timeout:g}s: the command was killed", file=sys.stderr)
            return EXIT_TIMEOUT
        except guest.OutputLimit as e:
            raise WarmvmError(f"vm/{args.vm}: {e}: the command was killed") from None
        except (guest.ChannelError, ValueError) as e:
            raise WarmvmError(f"vm/{args.vm}: {e}") from None


def _write(stream: int, data: bytes) -> None:
    out = sys.stdout if stream == 1 else sys.stderr
    out.buffer.write(data)
    out.buffer.flush()
