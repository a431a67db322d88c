"""The reader of planner cases (tests/plan/*.yaml): a case's observed state as the planners' input.
The case format is tests/test_plan_cases.py's docstring."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from controller.adapters.netlink.messages import Address, Link
from controller.base.kinds import Accel, DiskFormat, Taken
from controller.base.model import HostCaps
from controller.disks.state import DiskRecord, DiskState, ImageState, SeedFiles, StateSpace
from controller.engine.state import Observed
from controller.network.firewall import Guest, Ruleset
from controller.network.hostfilter import Allowed, HostRules
from controller.network.state import FirewallState, net_state
from controller.snapshots.state import Shape, Snapshot, SnapshotFiles, SnapshotRecord, Snapshots
from controller.specs.schema import host_port, parse_quantity
from controller.vms.plan import spec_hash
from controller.vms.state import TrashEntry, VmRecord, VmState

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
    forwarding = fw.get("forwarding", False)
    if not fw.get("present"):
        return FirewallState(table, False, None, forwarding=forwarding)
    guests = frozenset(Guest(g["port"], g["mac"], g["ip"]) for g in fw.get("guests") or [])
    host = fw.get("host")
    return FirewallState(table, True, Ruleset(frozenset(fw.get("dropped") or []), guests),
                         host=_host_rules(host) if host is not None else None, forwarding=forwarding)


def _host_rules(host: dict[str, Any]) -> HostRules:
    """The inet table as a case gives it: bridges, allowed as BRIDGE:GATEWAY:PORT/PROTO, egress."""
    allowed = {Allowed(bridge, gateway, host_port(port))
               for bridge, gateway, port in (a.split(":") for a in host.get("allowed") or [])}
    return HostRules(frozenset(host.get("bridges") or []), frozenset(allowed), frozenset(host.get("egress") or []))


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
        out[vm] = DiskState(vm, STATE / "vms" / vm / "disk.img", record, STATE / seed if seed else None,
                            parse_quantity(disk["allocated"]) if "allocated" in disk else 0)
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
                          restore_failed=v.get("restore_failed"), exits=v.get("exits", 0),
                          retry_at=v.get("retry_at"), uid=v.get("uid"), saved=v.get("saved"),
                          suspending=v.get("suspending", False), accel=v.get("accel"))
        out[name] = VmState(name, record, alive=v["alive"], saved_size=v.get("saved_size"))
    return out


def _trash(data: dict[str, Any]) -> Any:
    if "trash" not in data:
        return Missing("trash")
    out = []
    for e in data["trash"]:
        record = VmRecord(network=e["network"], ip=e["ip"], mac="52:54:00:00:00:01", created=0.0, uid=e.get("uid")) \
            if e.get("ip") else None
        seed = f"images/{e['image']}/seed-{e['seed']}.ext4" if e.get("seed") else None
        taken = Taken.SEED_QCOW2 if e["format"] == "qcow2" else Taken.SEED_REFLINK
        disk = DiskRecord(image=e["image"], size=parse_quantity(e.get("disk_size", "1Gi")), taken=taken,
                          format=DiskFormat(e["format"]), seed=seed, created=0.0) if e.get("image") else None
        path = STATE / "trash" / f"{e['vm']}.{e['removed_at']}"
        out.append(TrashEntry(e["vm"], e["removed_at"], path, record, disk, STATE / seed if seed else None,
                              parse_quantity(e.get("size", "1Mi"))))
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
                    snapshots=_snapshots(data), host=_host(data), space=_space(data))


def _space(data: dict[str, Any]) -> StateSpace | None:
    """The state's file system; left out: not observed, so work disks go unbudgeted."""
    given = data.get("space")
    return StateSpace(parse_quantity(given["size"]), parse_quantity(given["free"])) if given else None


def _host(data: dict[str, Any]) -> HostCaps:
    """The host's capabilities: a host without KVM (as this one), unless the case says."""
    given = data.get("host") or {}
    return HostCaps(kvm=given.get("kvm", False), tsc_khz=given.get("tsc_khz"))
