"""Planner cases as data: tests/plan/<case>.yaml holds specs, observed state and the expected plan.

The planner is pure, so a case needs no kernel, no disk and no QEMU: the
observed state is written out by hand (links as the dump reports them,
seeds, disks and VM records as observation would find them) and the plan is
compared line by line. The reader is strict: every part of the observed
state (`links`, `images`, `disks`, `vms`, `trash`, `clone_method`, `now`) a
planner reads must be given, even if empty (`broken` and `snapshots` alone default to none); a part left out raises as soon as a planner
touches it, so no case passes on facts it never stated. The image files a
spec names are given under `files` (anything not listed does not exist).

Case format (quantities as in specs: 64Mi, 1Gi):

    specs: |            the spec files' text (one file)
    extra_files: {NAME: TEXT}   more spec files beside it
    files:              the image files specs may name, relative to the spec file
      vmlinuz: kernel
      rootfs.ext4: {ext4: [/root]}      an ext4 image and the directories it holds
      root: dir
    observed:
      links:     [{name, kind, alias, master, up}]
      addresses: [{dev, cidr}]
      clone_method: qcow2
      images:    {IMAGE: {inputs: FP|null, seeds: {FP: {size, mtime, sized: [SIZE...]} | {orphan: true, sized: [...]}},
                          failed: {FP: why}}}
      disks:     {VM: {image, size, taken, format, seed: FP-SIZE|null, allocated: SIZE (default 0)}}
      vms:       {VM: {network, ip, alive, ready, pid, spec: current|HASH, attempts, failure}}
      trash:     [{vm, removed_at, ip, network, image, format, seed: FP-SIZE|null,
                   disk_size: SIZE (default 1Gi), size: what the entry takes (default 1Mi)}]
      now:       unix seconds, for the trash's expiry
      broken:    {vm/NAME: why}
      snapshots: {wanted: [{image, memory, vcpus, accel, fingerprint}],
                  on_disk: [{image, fingerprint, complete: BOOL}],
                  failed: {IMAGE/FP: why}}
                 left out: none wanted, none on disk (no VM asks to be restored)
      firewall:  {present: BOOL, dropped: [PORT...], guests: [{port, mac, ip}],
                  host: {bridges: [BRIDGE...], allowed: [BRIDGE:GATEWAY:PORT/PROTO...], egress: [BRIDGE...]},
                  forwarding: BOOL} | {error: WHY}
                 our nftables tables (warmvm-c0ffee00): the bridge table's sets, and the inet table's
                 under `host` (left out: that table is absent); forwarding: net.ipv4.ip_forward
                 (default false). `firewall` left out: not observed, so containment is not planned
                 (as before a state directory exists). Links may say `isolated: true`.
      host:      {kvm: BOOL, tsc_khz: N}   the host's capabilities; left out: no KVM (as here)
      space:     {size: SIZE, free: SIZE}   the state's file system; left out: not observed, so work
                 disks are not budgeted
    policy: {retain_removed: SECONDS, confirm_removals: BOOL, disk_overcommit: RATIO}   (default: 24h, false, 1.0)
    actions: [...]   held_back: [...]   problems: [...]
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from controller.base.model import Policy
from controller.engine.plan import plan
from controller.specs.load import load

from .support.plancase import Files, observed_from

CASES = sorted((Path(__file__).parent / "plan").glob("*.yaml"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_plan_case(case: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(case.read_text())
    if data.get("specs"):  # no specs at all: no file (an empty one would hold removals back)
        (tmp_path / "specs.yaml").write_text(data["specs"])
    for name, text in (data.get("extra_files") or {}).items():
        (tmp_path / name).write_text(text)
    desired = load(tmp_path, Files(tmp_path, data.get("files") or {}))
    desired = replace(desired, policy=Policy(**data.get("policy", {})))
    assert [str(e) for e in desired.errors] == [e.replace("FILE", str(tmp_path / "specs.yaml"))
                                                for e in data.get("spec_errors", [])]
    result = plan(desired, observed_from(data["observed"], desired.vms))
    assert [a.describe() for a in result.actions] == data.get("actions", [])
    assert [a.describe() for a in result.held_back] == data.get("held_back", [])
    assert [h.replace(f"{tmp_path}/", "") for h in result.holds] == data.get("holds", [])
    assert list(result.problems) == data.get("problems", [])


def test_a_case_that_leaves_out_a_fact_the_planner_reads_fails() -> None:
    observed = observed_from({"links": []}, {})  # no images, disks or vms given
    with pytest.raises(AssertionError, match="observed.vms"):
        plan(load(Path("/nonexistent"), Files(Path("/"), {})), observed)
