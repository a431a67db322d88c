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
      disks:     {VM: {image, size, taken, format, seed: FP-SIZE|null}}
      vms:       {VM: {network, ip, alive, ready, pid, spec: current|HASH, attempts, failure}}
      trash:     [{vm, removed_at, ip, network, image, format, seed: FP-SIZE|null}]
      now:       unix seconds, for the trash's expiry
      broken:    {vm/NAME: why}
      snapshots: {wanted: [{image, memory, vcpus, accel, fingerprint}],
                  on_disk: [{image, fingerprint, complete: BOOL}],
                  failed: {IMAGE/FP: why}}
                 left out: none wanted, none on disk (no VM asks to be restored)
      firewall:  {present: BOOL, dropped: [PORT...], guests: [{port, mac, ip}]} | {error: WHY}
                 our nftables table (warmvm-c0ffee00); left out: not observed, so containment
                 is not planned (as before a state directory exists). Links may say `isolated: true`.
    policy: {retain_removed: SECONDS, confirm_removals: BOOL}   (default: 24h, false)
    actions: [...]   held_back: [...]   problems: [...]
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from controller.adapters.netlink.messages import Address, Link
from controller.base.kinds import Accel, DiskFormat, Taken
from controller.base.model import HostCaps, Policy
from controller.disks.state import DiskRecord, DiskState, ImageState, SeedFiles
from controller.engine.plan import plan
from controller.engine.state import Observed
from controller.network.firewall import Guest, Ruleset
from controller.network.state import FirewallState, net_state
from controller.snapshots.state import Shape, Snapshot, SnapshotFiles, SnapshotRecord, Snapshots
from controller.specs.load import load
from controller.specs.schema import parse_quantity
from controller.vms.plan import spec_hash
from controller.vms.state import TrashEntry, VmRecord, VmState

CASES = sorted((Path(__file__).parent / "plan").glob("*.yaml"))
STATE = Path("/state")
INSTANCE = "c0ffee00"  # this instance's marks in cases: warmvm:c0ffee00:ROLE:NETWORK[:VM]


class Missing:
    """Stands for a part of the observed state a case did not give: touching it fails the case."""

    def __init__(self, what: str) -> None:
        self.what = what

    def _fail(self, *_: Any, **__: Any) -> NoReturn:
        raise AssertionError(f"the planner read observed.{self.what}, which this case does not give")

    __getattr__ = __iter__ = __contains__ = __getitem__ = __len__ = __bool__ = _fail
    __lt__ = __le__ = __gt__ = __ge__ = __add__ = __radd__ = __sub__ = __rsub__ = _fail


class Files:
    """The image probe, answered from the case's `files` (relative to the spec file)."""

    def __init__(self, base: Path, files: dict[str, Any]) -> None:
        self.facts = {(base / name).resolve(): fact for name, fact in files.items()}

    def is_file(self, path: Path) -> bool:
        return path in self.facts and self.facts[path] != "dir"

    def is_dir(self, path: Path) -> bool:
        return self.facts.get(path) == "dir"

    def is_kernel(self, path: Path) -> bool:
        return self.facts.get(path) == "kernel"

    def is_ext4(self, path: Path) -> bool:
        return isinstance(self.facts.get(path), dict) and "ext4" in self.facts[path]

    def has_dir(self, rootfs: Path, inner: str) -> bool:
        return self.is_ext4(rootfs) and inner in self.facts[rootfs]["ext4"]


def _net(data: dict[str, Any]) -> Any:
    if "links" not in data:
        return Missing("net")
    entries = data["links"]
    index = {e["name"]: i + 2 for i, e in enumerate(entries)}
    links = [Link(index[e["name"]], e["name"], e.get("kind"), e.get("alias"),
                  index[e["master"]] if e.get("master") else None, e.get("up", True), 0, e.get("isolated", False))
             for e in entries]
    addresses = [Address(index[a["dev"]], a["cidr"]) for a in data.get("addresses", [])]
    return replace(net_state(links, addresses, INSTANCE), firewall=_firewall(data))


def _firewall(data: dict[str, Any]) -> FirewallState | None:
    if "firewall" not in data:
        return None
    fw, table = data["firewall"] or {}, f"warmvm-{INSTANCE}"
    if fw.get("error"):
        return FirewallState(table, False, None, fw["error"])
    if not fw.get("present"):
        return FirewallState(table, False, None)
    guests = frozenset(Guest(g["port"], g["mac"], g["ip"]) for g in fw.get("guests") or [])
    return FirewallState(table, True, Ruleset(frozenset(fw.get("dropped") or []), guests))


def _images(data: dict[str, Any]) -> Any:
    if "images" not in data:
        return Missing("images")
    out = {}
    for name, image in (data["images"] or {}).items():
        seeds = {}
        for fp, seed in (image["seeds"] or {}).items():
            directory = STATE / "images" / name
            sized = {parse_quantity(s): directory / f"seed-{fp}-{parse_quantity(s)}.ext4" for s in seed["sized"]}
            if seed.get("orphan"):  # only sized seeds are left of this fingerprint
                seeds[fp] = SeedFiles(None, 0, 0.0, sized)
                continue
            seeds[fp] = SeedFiles(directory / f"seed-{fp}.ext4", parse_quantity(seed["size"]), seed["mtime"], sized)
        out[name] = ImageState(name, image["inputs"], seeds, image["failed"] or {})
    return out


def _disks(data: dict[str, Any]) -> Any:
    if "disks" not in data:
        return Missing("disks")
    out = {}
    for vm, disk in (data["disks"] or {}).items():
        seed = f"images/{disk['image']}/seed-{disk['seed']}.ext4" if disk["seed"] else None
        record = DiskRecord(image=disk["image"], size=parse_quantity(disk["size"]), taken=Taken(disk["taken"]),
                            format=DiskFormat(disk["format"]), seed=seed, created=0.0)
        out[vm] = DiskState(vm, STATE / "vms" / vm / "disk.img", record, STATE / seed if seed else None)
    return out


def _vms(data: dict[str, Any], specs: dict[str, Any]) -> Any:
    if "vms" not in data:
        return Missing("vms")
    out = {}
    for name, v in (data["vms"] or {}).items():
        spec = spec_hash(specs[name]) if v.get("spec") == "current" else v.get("spec", "")
        record = VmRecord(network=v["network"], ip=v["ip"], mac="52:54:00:00:00:01", created=0.0, spec=spec,
                          pid=v.get("pid"),
                          ready=1.0 if v.get("ready") else None, boots=v.get("boots", 1 if v.get("pid") else 0),
                          attempts=v.get("attempts", 0), failure=v.get("failure"),
                          restore_failed=v.get("restore_failed"))
        out[name] = VmState(name, record, alive=v["alive"])
    return out


def _trash(data: dict[str, Any]) -> Any:
    if "trash" not in data:
        return Missing("trash")
    out = []
    for e in data["trash"]:
        record = VmRecord(network=e["network"], ip=e["ip"], mac="52:54:00:00:00:01", created=0.0) \
            if e.get("ip") else None
        seed = f"images/{e['image']}/seed-{e['seed']}.ext4" if e.get("seed") else None
        taken = Taken.SEED_QCOW2 if e["format"] == "qcow2" else Taken.SEED_REFLINK
        disk = DiskRecord(image=e["image"], size=1 << 30, taken=taken, format=DiskFormat(e["format"]), seed=seed,
                          created=0.0) if e.get("image") else None
        path = STATE / "trash" / f"{e['vm']}.{e['removed_at']}"
        out.append(TrashEntry(e["vm"], e["removed_at"], path, record, disk, STATE / seed if seed else None, 1 << 20))
    return tuple(out)


def _snapshots(data: dict[str, Any]) -> Snapshots:
    given = data.get("snapshots") or {}
    wanted = {(w["image"], Shape(parse_quantity(w["memory"]), w["vcpus"], Accel(w["accel"]))): w["fingerprint"]
              for w in given.get("wanted", [])}
    on_disk = {}
    for d in given.get("on_disk", []):
        image, fp = d["image"], d["fingerprint"]
        state, record = STATE / "snapshots" / image / f"{fp}.bin", STATE / "snapshots" / image / f"{fp}.json"
        record_of = SnapshotRecord(image=image, fingerprint=fp, memory=256 << 20, vcpus=1,
                                   accel=Accel(d.get("accel", "tcg")), tsc_khz=None, size=1 << 26, sha256="0" * 64,
                                   generate_ms=1.0, created=0.0, qemu="7.2.0")
        snapshot = Snapshot(state, record_of) if d.get("complete", True) else None
        on_disk[(image, fp)] = SnapshotFiles(image, fp, (state, record), snapshot)
    failed = {tuple(key.split("/")): why for key, why in (given.get("failed") or {}).items()}
    return Snapshots(wanted, on_disk, failed)  # type: ignore[arg-type]


def observed_from(data: dict[str, Any], specs: dict[str, Any]) -> Observed:
    return Observed(net=_net(data), images=_images(data), disks=_disks(data),
                    clone_method=data.get("clone_method", Missing("clone_method")), vms=_vms(data, specs),
                    now=data.get("now", Missing("now")), trash=_trash(data), broken=data.get("broken", {}),
                    snapshots=_snapshots(data), host=_host(data))


def _host(data: dict[str, Any]) -> HostCaps:
    """The host's capabilities: a host without KVM (as this one), unless the case says."""
    given = data.get("host") or {}
    return HostCaps(kvm=given.get("kvm", False), tsc_khz=given.get("tsc_khz"))


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
