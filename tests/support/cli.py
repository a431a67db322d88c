"""The CLI as the tests drive it: the real `warmvm` as a child process (it inherits the test's network
namespace), the spec text it reads, and the files it leaves in the state directory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def network_spec(name: str = "default", bridge: str = "wvbr0", cidr: str = "10.88.0.0/24",
                 size: int = 3, prefix: str | None = None) -> str:
    pool = f"    size: {size}\n" + (f"    prefix: {prefix}\n" if prefix else "")
    return (f"apiVersion: warmvm/v1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n"
            f"  bridge: {bridge}\n  cidr: {cidr}\n  tapPool:\n{pool}")


def vm_spec(name: str, **spec: str) -> str:
    body = "".join(f"  {k}: {v}\n" for k, v in spec.items()) or "  {}\n"
    return f"apiVersion: warmvm/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n{body}"


def command(specs: Path, state: Path, *args: str) -> list[str]:
    """The command line of `warmvm --specs SPECS --state STATE ARGS`, for a child the test drives itself."""
    return [sys.executable, "-m", "controller", "--specs", str(specs), "--state", str(state), *args]


def warmvm(specs: Path, state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs the real CLI as a child process (it inherits the test's namespace)."""
    return subprocess.run(command(specs, state, *args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def reconcile(specs: Path, state: Path, *options: str, ok: bool = True,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`warmvm OPTIONS reconcile`: it never ends in a traceback, and with `ok` (the default) it exits 0.
    The options are the ones every command takes (--log-format, --retain-removed, --confirm-removals…);
    the timeout leaves room for VMs that boot under TCG."""
    result = warmvm(specs, state, *options, "reconcile", timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def reconcile_records(specs: Path, state: Path, *options: str, timeout: float = 300) -> list[dict[str, Any]]:
    """A reconcile that exits 0, with the JSON log: its records (one per applied action, then the summary)."""
    return records(reconcile(specs, state, "--log-format", "json", *options, timeout=timeout).stderr)


def records(log: str) -> list[dict[str, Any]]:
    """The JSON records of a `--log-format json` log (the lines that are not JSON, such as problems, left out)."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def assert_verified(specs: Path, state: Path) -> None:
    """The suite's oracle: once a reconcile has converged, `warmvm verify` finds no leak (a leak after
    convergence is a reconciler bug)."""
    reconcile(specs, state)
    audit = warmvm(specs, state, "verify", "-o", "json")
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["clean"], report["leaks"]


def ssh_command(state: Path, vm: str) -> list[str]:
    """`warmvm ssh VM --`, the command to run in the VM to be added."""
    return [sys.executable, "-m", "controller", "--state", str(state), "ssh", vm, "--"]


def ssh(state: Path, vm: str, line: str) -> str:
    """`warmvm ssh VM -- LINE`, which must succeed: its output."""
    result = subprocess.run([*ssh_command(state, vm), line], capture_output=True, text=True, timeout=60, cwd=REPO,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


def vms(specs: Path, state: Path) -> dict[str, dict[str, Any]]:
    """`warmvm get vms`, by VM name."""
    rows = json.loads(warmvm(specs, state, "get", "vms", "-o", "json").stdout)
    return {row["name"]: row for row in rows}


def instance(state: Path) -> str:
    """The state directory's identity, which every mark of its devices carries."""
    return (state / "instance").read_text().strip()


def vm_record(state: Path, vm: str) -> dict[str, Any]:
    """state/vms/VM/vm.json: the VM's lease, its QEMU's pid, how it booted."""
    return json.loads((state / "vms" / vm / "vm.json").read_text())  # type: ignore[no-any-return]


def qemu_pid(state: Path, vm: str) -> int:
    return int(vm_record(state, vm)["pid"])
