"""Planner cases as data: tests/plan/<case>.yaml holds specs, observed state and the expected plan.

The planner is pure, so a case needs no kernel: observed links are listed by
hand (as the dump would report them) and the plan is compared line by line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.netstate import Address, Link, net_state
from controller.observed import Observed
from controller.plan import plan
from controller.specs import load
from controller.vmstate import VmRecord, VmState

CASES = sorted((Path(__file__).parent / "plan").glob("*.yaml"))


def observed_from(data: dict[str, Any]) -> Observed:
    entries = data.get("links", [])
    index = {e["name"]: i + 2 for i, e in enumerate(entries)}
    links = [Link(index[e["name"]], e["name"], e.get("kind"), e.get("alias"),
                  index[e["master"]] if e.get("master") else None, e.get("up", True), 0) for e in entries]
    addresses = [Address(index[a["dev"]], a["cidr"]) for a in data.get("addresses", [])]
    vms = {name: VmState(name, VmRecord(v["network"], v["ip"], "52:54:00:00:00:01", 0.0, pid=v.get("pid"),
                                        ready=1.0 if v.get("ready") else None, spec=v.get("spec", "")),
                         alive=v.get("alive", False))
           for name, v in data.get("vms", {}).items()}
    return Observed(net=net_state(links, addresses), vms=vms)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_plan_case(case: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(case.read_text())
    (tmp_path / "specs.yaml").write_text(data.get("specs") or "")
    desired = load(tmp_path)
    result = plan(desired, observed_from(data.get("observed") or {}))
    assert [a.describe() for a in result.actions] == data.get("actions", [])
    assert [a.describe() for a in result.held_back] == data.get("held_back", [])
    assert list(result.problems) == data.get("problems", [])
