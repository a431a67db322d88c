"""The functional core stays pure: planning modules never import a driver.

A cheap stand-in for an import-linter contract: if a planner needs something
from the host, it must come in through observed state, not a driver call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "controller"
PLANNING = ["plan", "pool", "seeds", "workdisks", "vms", "actions", "model", "netstate", "views"]
DRIVERS = {"netlink", "disks", "vmm", "ssh", "store", "diskops", "vmops", "host", "apply", "reconcile", "cli",
           "rtnl"}


def local_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add((node.module or "").split(".")[0])
            if not node.module:
                found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", PLANNING)
def test_planning_module_imports_no_driver(module: str) -> None:
    assert not local_imports(module) & DRIVERS, f"{module}.py imports a driver"


def test_the_contract_would_catch_a_driver_import() -> None:
    assert local_imports("apply") & DRIVERS, "the check must see what apply.py imports"


def test_cli_names_every_view() -> None:
    from controller import cli, views
    assert set(cli.VIEW_NAMES) == set(views.VIEWS)
