"""QEMU, for the VM and snapshot drivers: the machine and its command line (machine), the process
(process), its console (console, drain), QMP (qmp), saving and loading a guest's state (migration),
and what the host offers it (host)."""

from . import console
from .host import host_tsc_khz, kvm_usable, kvm_usable_cached
from .machine import (
    IDENTITY_ENTRY,
    QEMU,
    Machine,
    inputs_of,
    kernel_cmdline,
    mac_for,
    qemu_argv,
    snapshot_layout,
    template,
)
from .migration import IDENTITY_SIZE, TEMPLATE_IDENTITY, Identity, load_state, save_state
from .process import (
    argv_of,
    connect,
    exited,
    failure_reason,
    find_untracked,
    kill,
    kill_spawned,
    running_pid,
    start,
    stop,
    wait_gone,
)
from .qmp import Qmp, qmp

__all__ = ["IDENTITY_ENTRY", "IDENTITY_SIZE", "Identity", "Machine", "QEMU", "Qmp", "TEMPLATE_IDENTITY", "argv_of",
           "connect", "console", "exited", "failure_reason", "find_untracked", "host_tsc_khz", "inputs_of",
           "kernel_cmdline", "kill", "kill_spawned", "kvm_usable", "kvm_usable_cached", "load_state", "mac_for",
           "qemu_argv", "qmp", "running_pid", "save_state", "snapshot_layout", "start", "stop", "template",
           "wait_gone"]
