"""The layers hold: import-linter's contracts (.importlinter) are kept, and would catch a breach.

The contracts are the architecture's source of truth: planning and state
modules import no driver, observer, subprocess, pyroute2 or pydantic; spec
loading imports no driver; each layer imports only from the layers below.
`.ci/run` runs lint-imports too; this test keeps `make test` honest alone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (make test installs it)")
    return subprocess.run([exe, "--config", str(root / ".importlinter")], cwd=root, capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_are_kept() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_contracts_would_catch_a_planner_running_a_subprocess(tmp_path: Path) -> None:
    shutil.copytree(REPO / "controller", tmp_path / "controller", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    planner = tmp_path / "controller" / "vms" / "plan.py"
    planner.write_text(planner.read_text().replace("from __future__ import annotations\n",
                                                   "from __future__ import annotations\n\nimport subprocess\n", 1))
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "controller.vms.plan is not allowed to import subprocess" in result.stdout


def test_cli_names_every_view() -> None:
    from controller.cli import main as cli
    from controller.cli import views
    assert set(cli.VIEW_NAMES) == set(views.VIEWS) | {"daemon"}  # the daemon's row comes from its status file
