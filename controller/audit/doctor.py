"""`warmvm doctor`: is this host ready for these specs? A preflight in the spirit of libvirt's
virt-host-validate: each check has a name, a status (ok, warn, fail), a one-line finding and, when not
ok, what to do. It changes nothing on the host (the clone-method probe writes and removes one file in
the state's tmp area, as reconcile does).
"""

from __future__ import annotations

from .checks import FAIL, OK, WARN, Check, Context, table
from .host_checks import acceleration, confinement, networking, state, tools
from .spec_checks import images, vms

__all__ = ["FAIL", "OK", "WARN", "Check", "Context", "doctor", "table"]


def doctor(ctx: Context) -> list[Check]:
    checks: list[Check] = []
    for section in (tools, acceleration, confinement, networking, state, images, vms):
        checks += section(ctx)
    return checks
