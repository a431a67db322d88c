"""VM create benchmark; run by hack/bench.sh inside its own namespace and state directory.

The modes run interleaved, run by run (cold, warm, cold, warm, ...) so that the
machine's drift hits all alike, with identical VM semantics (same kernel,
initrd, rootfs, /root contents, disk size and guest):
  cold: image `cold` has no work seed (the work disk is built from scratch out
        of the rootfs's /root) and the pool is empty (the TAP is created on the
        VM's path);
  warm: image `warm` has its seed (and the seed grown to the disk size) ready,
        and the pool holds a warm TAP per VM;
  restore: image `warm` with its seed, a warm TAP per VM and its boot snapshot
        (made before anything is measured); each VM has `boot: restore`;
  reference: what a user would do instead, by hand: the same kernel package
        (its bzImage), initramfs and rootfs booted the stock way (-M microvm,
        console=ttyS0 and the tsc_early_khz TCG needs; no warmvm tuning) on a
        disk and TAP made ready beforehand, timed from QEMU's spawn to the
        first SSH command. Every boot figure is also a ratio to it.
After the runs, on one running VM (restored when restore is measured), `exec true` against `ssh
true`, interleaved, one pair after another: `warmvm exec VM -- true` as a user runs it (a process,
Python's start-up included), the control channel alone (in this process), and OpenSSH's `ssh
true` (--exec-runs pairs; 0: not measured). Restore's total is its create to first SSH command.
The controller runs in this process, as the watching daemon would, through
the same code as `warmvm reconcile`. Per VM: the controller's own stage
timings from its lifecycle log (ip, tap, disk, qemu start, boot to SSH), the
controller's share (spec written -> QEMU spawned: everything but the guest's
boot), and the total by this benchmark's own clock (spec written -> its own
first successful SSH command, polled independently of the controller).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH_OUT,
    DEMO_IMAGE,
    HACK,
    STATE,
    document,
    image_document,
    network_document,
    root_tree,
    summary,
    timed,
)

from controller.adapters import ext4 as disks
from controller.adapters import guest
from controller.adapters.qemu import host_tsc_khz
from controller.adapters.ssh import host_alias, port_open, ssh_argv
from controller.audit.observe import observe_host
from controller.audit.verify import verify
from controller.base.events import Lifecycle
from controller.base.model import Policy
from controller.engine.converge import load_specs
from controller.engine.host import open_host
from controller.engine.reconcile import reconcile
from controller.specs.schema import parse_quantity
from controller.statedir.layout import Layout
from controller.statedir.store import Store

STAGES = ["ip", "tap", "disk", "qemu_start", "boot", "controller", "total"]
LABELS = {"ip": "IP lease", "tap": "TAP", "disk": "work disk", "qemu_start": "QEMU start",
          "boot": "boot to SSH", "controller": "controller share", "total": "total (own clock)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vms", type=int, default=1)
    ap.add_argument("--disk-size", default="4Gi")
    ap.add_argument("--state-fs", default="host")
    ap.add_argument("--modes", default="cold,warm,restore,reference,suspend")
    ap.add_argument("--root-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--boot-timeout", type=float, default=180.0)
    ap.add_argument("--exec-runs", type=int, default=10, help="exec true / ssh true pairs on a running VM (0: none)")
    ap.add_argument("--out", type=Path, default=BENCH_OUT)
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    assert set(modes) <= {"cold", "warm", "restore", "reference", "suspend"} and modes, \
        "--modes takes cold, warm, restore, reference and suspend"
    pauses = "suspend" in modes  # measured apart: a suspend and a resume of one running VM per run
    modes = [m for m in modes if m != "suspend"]

    rootfs_dir = bench_image(args.root_mib, args.files)
    bench = Bench(args, rootfs_dir)
    bench.prepare(modes)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    suspends: list[dict[str, float]] = []
    for run in range(args.runs):
        for mode in modes:
            results[mode] += bench.create(mode, run)
            print(f"run {run + 1}/{args.runs} {mode}: " + ", ".join(
                f"{r['vm']} total {r['total']:.0f} ms" for r in results[mode][-args.vms:]), file=sys.stderr)
        if pauses:
            suspends.append(bench.suspend_resume(run))
            print(f"run {run + 1}/{args.runs} suspend: {suspends[-1]}", file=sys.stderr)
    report = summarise(results, vars(args) | {"modes": modes})
    if suspends:
        report["suspend"] = {"runs": suspends, "stats": {k: summary([r[k] for r in suspends]) for k in suspends[0]}}
    if "restore" in modes:
        report["snapshots"] = bench.snapshots()
        report["restore_create_to_first_ssh_ms"] = report["modes"]["restore"]["stats"]["total"]
    if args.exec_runs > 0 and {"warm", "restore"} & set(modes):
        report["exec_vs_ssh"] = bench.exec_vs_ssh(args.exec_runs, "restore" if "restore" in modes else "cold")
    report["verify"] = bench.verify()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-create.json").write_text(json.dumps(report, indent=2, default=str))
    if report["modes"]:
        chart(report, args.out / "bench-create.png")
    print_report(report)
    print(f"\nJSON: {args.out / 'bench-create.json'}  chart: {args.out / 'bench-create.png'}")


# --- the image under test ---------------------------------------------------------

def bench_image(root_mib: int, files: int) -> Path:
    """The demo guest with a realistic /root inside its rootfs (built once, cached in state/)."""
    subprocess.run(["bash", str(HACK / "build-image.sh")], check=True, stdin=subprocess.DEVNULL)
    demo = DEMO_IMAGE
    tree = root_tree(STATE, root_mib, files)
    out = STATE / f"bench-image-{root_mib}m-{files}f"
    stamp = out / ".complete"
    key = f"{(demo / '.complete').read_text().strip()}|{root_mib}|{files}"
    if stamp.exists() and stamp.read_text() == key:
        return out
    print(f"bench: building a rootfs holding a {root_mib} MiB /root ({files} files)", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    stage = out / "tree"
    disks.extract_dir(demo / "rootfs.ext4", "/", stage)
    shutil.rmtree(stage / "root")
    shutil.copytree(tree, stage / "root", symlinks=True, ignore=shutil.ignore_patterns(".complete"))
    shutil.copy2(demo / "root" / "README", stage / "root" / "README")
    size = -(-(disks.content_size(stage) * 5 // 4 + (64 << 20)) // (1 << 20)) << 20
    disks.build_ext4(out / "rootfs.ext4", size, stage)
    shutil.rmtree(stage)
    for name in ("vmlinuz", "vmlinux", "initrd.img"):
        if (demo / name).exists():
            shutil.copy2(demo / name, out / name)
    stamp.write_text(key)
    return out


# --- driving the controller -------------------------------------------------------

class NotConverged(Exception):
    pass


class Bench:
    def __init__(self, args: argparse.Namespace, image: Path) -> None:
        self.args = args
        self.specs = args.work / "specs"
        self.state = args.state
        self.specs.mkdir(parents=True, exist_ok=True)
        self.disk_size = parse_quantity(args.disk_size)
        self.overhead: dict[str, float] = {}
        self.image = image
        # a bench removes every VM it made, on purpose: nothing kept in the trash, no confirmation; its
        # guests write next to nothing, so its disks may overcommit the file system (--state-fs xfs: 4Gi
        # disks on a 4 GB one)
        self.policy = Policy(retain_removed=0, confirm_removals=True, disk_overcommit=1000)
        self.keep: list[str] = []  # VM specs written with every other
        kernel = "vmlinux" if (image / "vmlinux").exists() else "vmlinuz"  # warmvm's boot: PVH
        for mode, seed in (("cold", "none"), ("warm", "{from: 'rootfs:/root'}")):
            (self.specs / f"image-{mode}.yaml").write_text(image_document(mode, image, kernel, seed))

    def network(self, pool: int) -> None:
        (self.specs / "network.yaml").write_text(network_document("wvbench0", "10.99.0.0/20", pool))

    def vms(self, image: str, names: list[str], running: bool = True, boot: str = "cold",
            suspended: bool = False) -> None:
        docs = [document("VM", n, image=image, diskSize=self.disk_size, running=str(running).lower(), boot=boot,
                         suspended=str(suspended).lower()) for n in names] + self.keep
        path = self.specs / "vms.yaml"
        if docs:
            path.write_text("---\n".join(docs))
        else:
            path.unlink(missing_ok=True)

    def reconcile(self) -> list[dict[str, Any]]:
        """One `warmvm reconcile`, in process; returns its lifecycle records."""
        stream = io.StringIO()
        log = Lifecycle("json", stream)
        store = Store(self.state)
        start = time.perf_counter()
        with store.lock(10):
            locked = time.perf_counter()
            desired = replace(load_specs(self.specs), policy=self.policy)
            loaded = time.perf_counter()
            assert not desired.errors, desired.errors
            host = open_host(store, True)
            host.boot_timeout = self.args.boot_timeout
            drivers = host.drivers()
            try:
                result = reconcile(desired, drivers, host.observer(desired), log)
            finally:
                drivers.close()
        records = [json.loads(line) for line in stream.getvalue().splitlines()]
        self.overhead = {"lock_ms": (locked - start) * 1000, "load_ms": (loaded - locked) * 1000,
                         "observe_ms": result.observe_ms, "plan_ms": result.plan_ms}
        if not result.converged:
            trouble = [r for r in records if r.get("outcome") in ("failed", "retry")]
            pending = [a.describe() for a in result.last_plan.actions] if result.last_plan else []
            raise NotConverged(f"reconcile did not converge: {trouble[-3:]}; still planned: {pending[:5]}")
        return records

    def settle(self) -> None:
        """An unmeasured reconcile (set-up, clean-up). One that does not converge gets one more call,
        as the daemon's next pass would, and says so: once in about a dozen suite runs one did not,
        for a reason not found yet."""
        try:
            self.reconcile()
        except NotConverged as e:
            print(f"bench: warning: {e}; reconciling again", file=sys.stderr)
            self.reconcile()

    def prepare(self, modes: list[str]) -> None:
        """Warm mode's seed and the seed grown to the disk size, made before anything is measured:
        a provisioned (not booted) VM takes the slow path while the seed is generated, a second
        one derives the sized seed."""
        self.network(0)
        for prep in (["prep-0"], ["prep-1"]) if {"warm", "restore"} & set(modes) else ():
            self.vms("warm", prep, running=False)
            self.settle()
        if "restore" in modes:
            # a provisioned VM that asks for it makes the image's snapshot and keeps it wanted to the end
            # (with nothing retained, an unwanted snapshot is freed at once)
            self.vms("warm", ["snapshot-holder"], running=False, boot="restore")
            self.settle()
            self.keep = [(self.specs / "vms.yaml").read_text()]
            assert self.snapshots(), "bench: the warm image's snapshot was not made"
        self.vms("warm", [])
        self.settle()

    def snapshots(self) -> list[dict[str, Any]]:
        """Each snapshot's size and generation time, as its record says."""
        return [{k: v for k, v in json.loads(p.read_text()).items() if k in ("image", "size", "generate_ms",
                                                                              "memory", "vcpus", "accel")}
                for p in sorted((self.state / "snapshots").glob("*/*.json")) if p.name != "failed.json"]

    def create(self, mode: str, run: int) -> list[dict[str, float]]:
        if mode == "reference":
            return self.reference(run)
        k = self.args.vms
        self.network(0 if mode == "cold" else k)
        self.settle()  # the pool at its size for this mode (not measured)
        names = [f"{mode}-{run}-{i}" for i in range(k)]
        ready: dict[str, float] = {}
        t0 = time.time()
        self.vms("warm" if mode == "restore" else mode, names, boot="restore" if mode == "restore" else "cold")
        pollers = [threading.Thread(target=self._poll_ssh, args=(n, t0, ready), daemon=True) for n in names]
        for p in pollers:
            p.start()
        records = self.reconcile()
        for p in pollers:
            p.join(timeout=self.args.boot_timeout)
        out = [self._stages(name, records, t0, ready) for name in names]
        if mode == "restore" and any(r["boot_how"] != "restore" for r in out):
            print(f"bench: warning: not every VM was restored: {[r['boot_how'] for r in out]}", file=sys.stderr)
        self.vms(mode, [])
        self.settle()  # stop and remove them (not measured)
        return out

    def suspend_resume(self, run: int) -> dict[str, float]:
        """One running VM (booted warm, not measured) suspended, then resumed: the suspend's own time
        and the whole reconcile's, the saved state's size, and a resume's spec-to-first-SSH."""
        name = f"suspend-{run}"
        self.network(1)
        self.vms("warm", [name])
        self.settle()
        t0 = time.time()
        self.vms("warm", [name], suspended=True)
        records = self.reconcile()
        suspended = (time.time() - t0) * 1000
        mine = next(r for r in records if r.get("stage") == "vm_suspend" and r.get("outcome") == "ok")
        ready: dict[str, float] = {}
        t1 = time.time()
        self.vms("warm", [name])
        poller = threading.Thread(target=self._poll_ssh, args=(name, t1, ready), daemon=True)
        poller.start()
        records = self.reconcile()
        poller.join(timeout=self.args.boot_timeout)
        if name not in ready:
            raise SystemExit(f"bench: {name} never answered SSH after its resume")
        how = next((r.get("boot") for r in records if r.get("stage") == "vm_start"), None)
        assert how == "resume", f"bench: {name} was not resumed ({how})"
        loaded = next(r for r in records if r.get("stage") == "vm_await" and r.get("outcome") == "ok")
        self.vms("warm", [])
        self.settle()
        return {"suspend_ms": mine["suspend_ms"], "suspend_reconcile_ms": suspended,
                "state_mib": mine["size"] / (1 << 20), "resume_load_ms": loaded.get("resume_ms", 0.0),
                "resume_to_ssh_ms": (ready[name] - t1) * 1000}

    def reference(self, run: int) -> list[dict[str, float]]:
        """The stock boot a user would start by hand, on a disk and TAP warmvm made ready (not timed)."""
        names = [f"reference-{run}-{i}" for i in range(self.args.vms)]
        self.network(self.args.vms)
        self.vms("warm", names, running=False)
        self.settle()
        desired = load_specs(self.specs)
        observed = open_host(Store(self.state), False).observe(desired)
        taps = observed.net.vm_taps()
        out, procs, ready = [], [], {}
        t0 = time.time()
        for name in names:
            record, files = observed.vms[name].record, Layout(Store(self.state).root).vm(name)
            argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256",
                    "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                    "-serial", f"file:{files.directory / 'reference-console.log'}",
                    "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
                    "-append", f"console=ttyS0 tsc_early_khz={host_tsc_khz()} warmvm.ip={record.ip}/20 "
                               f"warmvm.gw=10.99.0.1 warmvm.hostname={name}",
                    "-drive", f"id=root,file={self.image / 'rootfs.ext4'},format=raw,if=none,readonly=on",
                    "-device", "virtio-blk-device,drive=root,serial=warmvm-root",
                    "-drive", f"id=work,file={files.disk},format={observed.disks[name].format},if=none",
                    "-device", "virtio-blk-device,drive=work,serial=warmvm-work",
                    "-netdev", f"tap,id=n0,ifname={taps[name].name},script=no,downscript=no",
                    "-device", f"virtio-net-device,netdev=n0,mac={record.mac}"]
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        pollers = [threading.Thread(target=self._poll_ssh, args=(n, t0, ready, True), daemon=True) for n in names]
        for p in pollers:
            p.start()
        for p in pollers:
            p.join(timeout=self.args.boot_timeout)
        for proc in procs:
            proc.kill()
            proc.wait()
        for name in names:
            if name not in ready:
                raise SystemExit(f"bench: {name} (reference boot) never answered SSH")
            total = (ready[name] - t0) * 1000
            out.append({"vm": name, "ip": 0.0, "tap": 0.0, "disk": 0.0, "qemu_start": 0.0, "boot": total,
                        "controller": 0.0, "total": total, "disk_path": "by hand", "tap_from": "by hand",
                        "timeline": {}})
        self.vms("warm", [])
        self.settle()
        return out

    def exec_vs_ssh(self, runs: int, boot: str) -> dict[str, Any]:
        """`exec true` against `ssh true` on one running VM, interleaved (which goes first alternates):
        `warmvm exec` as a user runs it, the channel alone (in this process), and OpenSSH."""
        name = "exec-0"
        self.network(1)
        self.vms("warm", [name], boot=boot)
        self.settle()
        record = json.loads((self.state / "vms" / name / "vm.json").read_text())
        files = Layout(Store(self.state).root).vm(name)
        ssh = ssh_argv(self.state / "ssh" / "id_ed25519", record["ip"], ["true"], (files.known_hosts, host_alias(name)))
        cli = [sys.executable, "-m", "controller", "--state", str(self.state), "exec", name, "--", "true"]

        def run(argv: list[str]) -> None:
            done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=60,
                                  cwd=HACK.parent)
            if done.returncode != 0:
                raise SystemExit(f"bench: {argv[0]} ... true failed on {name}: {done.stderr.decode()[-300:]}")

        def channel() -> None:
            with guest.open_session(files.ctl, time.monotonic() + 10) as session:
                if guest.run(session, ["true"], time.monotonic() + 30, lambda stream, data: None) != 0:
                    raise SystemExit(f"bench: true failed on {name} over its channel")
        times: dict[str, list[float]] = {"exec_ms": [], "exec_channel_ms": [], "ssh_ms": []}
        steps = [("exec_ms", lambda: run(cli)), ("exec_channel_ms", channel), ("ssh_ms", lambda: run(ssh))]
        for i in range(runs):
            for key, step in steps if i % 2 == 0 else steps[::-1]:
                times[key].append(timed(step))
        self.vms("warm", [])
        self.settle()
        return {"vm_boot": boot, "readiness": record.get("readiness"), **{k: summary(v) for k, v in times.items()}}

    def verify(self) -> dict[str, Any]:
        """The leak audit once everything the bench made is gone: a leak is a reconciler bug."""
        self.keep = []
        self.vms("warm", [])
        self.settle()
        desired = replace(load_specs(self.specs), policy=Policy(retain_removed=0))
        host = open_host(Store(self.state), False)
        report = verify(desired, host.observe(desired), observe_host(host.layout, host.instance),
                        str(host.layout.vms))
        if not report.clean:
            print(f"bench: LEAKS after the benchmark: {report.leaks}", file=sys.stderr)
        return report.to_dict()

    def _poll_ssh(self, name: str, t0: float, ready: dict[str, float], by_hand: bool = False) -> None:
        """The bench's own readiness: its first successful `ssh true`. A VM booted by hand (reference)
        made its own host key, which nothing pinned: accepted as a user would, on first sight."""
        record = self.state / "vms" / name / "vm.json"
        key = self.state / "ssh" / "id_ed25519"
        while time.time() - t0 < self.args.boot_timeout:
            try:
                ip = json.loads(record.read_text())["ip"]
            except (OSError, ValueError, KeyError):
                ip = None
            if ip and port_open(ip):
                pin = (self.state / "vms" / name / "known_hosts", host_alias(name))
                argv = ssh_argv(key, ip, ["true"], pin)
                if by_hand:
                    argv[argv.index("StrictHostKeyChecking=yes")] = "StrictHostKeyChecking=no"
                    argv[argv.index(f"UserKnownHostsFile={pin[0]}")] = "UserKnownHostsFile=/dev/null"
                done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL,
                                      check=False, timeout=30)
                if done.returncode == 0:
                    ready[name] = time.time()
                    return
            time.sleep(0.01)

    def _stages(self, name: str, records: list[dict[str, Any]], t0: float, ready: dict[str, float]) -> dict[str, Any]:
        mine = [r for r in records if r.get("object") == f"vm/{name}" and r.get("outcome") == "ok"]

        def ms(*stages: str) -> float:
            return sum(r["ms"] for r in mine if r["stage"] in stages)

        boot = next(r["boot_ms"] for r in mine if r["stage"] == "vm_await")
        timeline = next((r.get("timeline") for r in mine if r["stage"] == "vm_await"), None) or {}
        started = json.loads((self.state / "vms" / name / "vm.json").read_text())["started"]
        path = next((r.get("path") for r in mine if r["stage"] in ("disk_clone", "disk_scratch")), None)
        if name not in ready:
            raise SystemExit(f"bench: {name} never answered SSH for the benchmark")
        return {"vm": name, "ip": ms("ip_assign"), "tap": ms("tap_claim"), "disk": ms("disk_clone", "disk_scratch"),
                "qemu_start": ms("vm_start"), "boot": boot, "controller": (started - t0) * 1000,
                "total": (ready[name] - t0) * 1000, "disk_path": path,
                "tap_from": next((r.get("from") for r in mine if r["stage"] == "tap_claim"), None),
                "boot_how": next((r.get("boot") for r in mine if r["stage"] == "vm_start"), None),
                **{k: r[k] for r in mine if r["stage"] in ("vm_start", "vm_await")
                   for k in ("restore_qmp_ms", "restore_load_ms") if k in r},
                "timeline": timeline,  # each boot stage's first sight on the console, ms after QEMU's spawn
                **self.overhead}  # the whole reconcile's, outside the actions


# --- reporting ----------------------------------------------------------------------

def _timeline(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each boot stage's min, median and max over a mode's VMs (ms after QEMU's spawn)."""
    stages: dict[str, list[float]] = {}
    for row in rows:
        for stage, ms in row.get("timeline", {}).items():
            stages.setdefault(stage, []).append(ms)
    return {stage: summary(values) for stage, values in stages.items()}


def summarise(results: dict[str, list[dict[str, Any]]], config: dict[str, Any]) -> dict[str, Any]:
    stats = {mode: {s: summary([r[s] for r in rows]) for s in STAGES} for mode, rows in results.items()}
    report: dict[str, Any] = {"config": {k: str(v) for k, v in config.items() if k not in ("work",)},
                              "modes": {m: {"vms": results[m], "stats": stats[m], "timeline": _timeline(results[m])}
                                        for m in results}}
    if {"cold", "warm"} <= set(stats):
        ratio = {s: stats["warm"][s]["median"] / stats["cold"][s]["median"] if stats["cold"][s]["median"] else None
                 for s in STAGES}
        cold_dt = stats["cold"]["disk"]["median"] + stats["cold"]["tap"]["median"]
        warm_dt = stats["warm"]["disk"]["median"] + stats["warm"]["tap"]["median"]
        report["ratios_warm_over_cold"] = ratio
        report["disk_and_tap_cold_over_warm"] = cold_dt / warm_dt if warm_dt else None
    if "warm" in stats:
        report["warm_controller_median_ms"] = stats["warm"]["controller"]["median"]
    if "reference" in stats:  # every mode's total and boot as a ratio to the stock boot, same run
        ref = stats["reference"]["total"]["median"]
        report["over_reference"] = {m: {s: stats[m][s]["median"] / ref for s in ("total", "boot")}
                                    for m in stats if m != "reference"}
        if "warm" in stats:
            report["warm_over_reference"] = stats["warm"]["total"]["median"] / ref
    if {"restore", "warm"} <= set(stats):
        report["restore_over_warm"] = stats["restore"]["total"]["median"] / stats["warm"]["total"]["median"]
    if "restore" in stats:
        report["restore_total_median_ms"] = stats["restore"]["total"]["median"]
    return report


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"\nVM create: {cfg['runs']} runs x {cfg['vms']} VM(s), disk {cfg['disk_size']}, state on {cfg['state_fs']}, "
          f"/root {cfg['root_mib']} MiB in {cfg['files']} files")
    for mode, data in report["modes"].items():
        paths = sorted({f"disk={r['disk_path']} tap={r['tap_from']}" for r in data["vms"]})
        print(f"\n{mode} ({'; '.join(paths)})")
        print(f"  {'stage':<20}{'min':>10}{'median':>10}{'max':>10}  ms")
        for stage in STAGES:
            s = data["stats"][stage]
            print(f"  {LABELS[stage]:<20}{s['min']:>10.1f}{s['median']:>10.1f}{s['max']:>10.1f}")
    if "ratios_warm_over_cold" in report:
        print("\nwarm / cold (medians):")
        for stage, r in report["ratios_warm_over_cold"].items():
            print(f"  {LABELS[stage]:<20}{r:>10.3f}" if r is not None else f"  {LABELS[stage]:<20}{'-':>10}")
        print(f"  cold/warm on disk + TAP together: {report['disk_and_tap_cold_over_warm']:.1f}x (target >= 10x)")
    if "warm_over_reference" in report:
        print(f"  warm / reference (create to first SSH, medians): {report['warm_over_reference']:.2f} "
              "(target <= 0.5)")
    if "restore_over_warm" in report:
        print(f"  restore / warm (create to first SSH, medians): {report['restore_over_warm']:.2f} (target <= 0.2)")
    if "restore_create_to_first_ssh_ms" in report:
        t = report["restore_create_to_first_ssh_ms"]
        print(f"  restore create to first SSH: {t['median']:.0f} ms median (min {t['min']:.0f}, max {t['max']:.0f}; "
              "target <= 1000 ms)")
    if "exec_vs_ssh" in report:
        e = report["exec_vs_ssh"]
        for key, label in (("exec_ms", "warmvm exec VM -- true"), ("exec_channel_ms", "  the channel alone"),
                           ("ssh_ms", "ssh VM true")):
            print(f"  {label:<24}{e[key]['median']:>8.1f} ms median (min {e[key]['min']:.1f}, max {e[key]['max']:.1f}, "
                  f"{e[key]['n']} runs, interleaved)")
        print(f"  exec / ssh (medians): {e['exec_ms']['median'] / e['ssh_ms']['median']:.2f} "
              "(target: exec <= 100 ms)")
    for snap in report.get("snapshots", []):
        shape = f"{snap['memory'] >> 20} MiB, {snap['vcpus']} vCPU, {snap['accel']}"
        print(f"  snapshot of image {snap['image']} ({shape}): {snap['size'] / 1e6:.1f} MB, "
              f"made in {snap['generate_ms'] / 1000:.2f} s")
    if "warm_controller_median_ms" in report:
        print(f"  warm controller share: {report['warm_controller_median_ms']:.1f} ms median per VM "
              "(target <= 50 ms on a reflink-capable state directory)")
    for mode, data in report["modes"].items():
        if data.get("timeline"):
            stages = ", ".join(f"{stage} {s['median']:.0f}" for stage, s in data["timeline"].items())
            print(f"  {mode} boot timeline (median ms after QEMU's spawn): {stages}")
    if "suspend" in report:
        stats = report["suspend"]["stats"]
        print("\nsuspend and resume of a running VM (ms, min / median / max):")
        for key, label in (("suspend_ms", "suspend (saved, QEMU gone)"), ("suspend_reconcile_ms", "spec to suspended"),
                           ("resume_load_ms", "resume: state loaded"), ("resume_to_ssh_ms", "resume to first SSH"),
                           ("state_mib", "saved state (MiB)")):
            s = stats[key]
            print(f"  {label:<28}{s['min']:>10.1f}{s['median']:>10.1f}{s['max']:>10.1f}")
        print("  targets: a suspend <= 1000 ms, a resume to first SSH <= 1000 ms")
    if "verify" in report:
        audit = report["verify"]
        print(f"  verify after the benchmark: {'clean' if audit['clean'] else 'LEAKS: ' + str(audit['leaks'])}")


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report["modes"])
    parts = ["ip", "tap", "disk", "qemu_start", "boot"]
    colors = {"ip": "#8da0cb", "tap": "#66c2a5", "disk": "#fc8d62", "qemu_start": "#e78ac3", "boot": "#a6d854",
              "other": "#cccccc"}
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [3, 3, 2]})
    for y, mode in enumerate(modes):
        stats = report["modes"][mode]["stats"]
        x = 0.0
        for part in parts:
            width = stats[part]["median"] / 1000
            left.barh(y, width, left=x, color=colors[part], label=LABELS[part] if y == 0 else None)
            x += width
        other = max(0.0, stats["total"]["median"] / 1000 - x)
        left.barh(y, other, left=x, color=colors["other"], label="other (reconcile, SSH)" if y == 0 else None)
        left.text(x + other, y, f" {stats['total']['median'] / 1000:.2f} s", va="center")
    left.set_yticks(range(len(modes)), modes)
    left.set_xlabel("seconds (median per VM)")
    left.set_title("spec to SSH, by stage")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8)
    _timeline_chart(middle, report, modes)
    width = 0.8 / len(modes)
    controller = ["ip", "tap", "disk", "qemu_start", "controller"]
    for i, mode in enumerate(modes):
        stats = report["modes"][mode]["stats"]
        values = [max(stats[s]["median"], 0.01) for s in controller]
        right.bar([j + i * width for j in range(len(controller))], values, width, label=mode,
                  color={"cold": "#4c72b0", "warm": "#dd8452", "restore": "#55a868"}.get(mode, "#8172b2"))
    right.set_yscale("log")
    right.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(controller))],
                     [LABELS[s] for s in controller], rotation=20, fontsize=8)
    right.set_ylabel("ms (median, log scale)")
    right.set_title("the controller's own stages")
    right.legend()
    cfg = report["config"]
    fig.suptitle(f"warmvm VM create: {' vs '.join(modes)} ({cfg['runs']} runs x {cfg['vms']} VM, "
                 f"disk {cfg['disk_size']}, state on {cfg['state_fs']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


STAGE_COLORS = {"kernel": "#c6dbef", "initramfs": "#9ecae1", "root_mounted": "#6baed6", "init": "#4292c6",
                "identity": "#fdae6b", "network": "#2171b5", "sshd": "#08519c", "ssh": "#a6d854",
                "channel": "#66c2a5"}


def _timeline_chart(ax: Any, report: dict[str, Any], modes: list[str]) -> None:
    """Each mode's boot, stage by stage (medians, from QEMU's spawn), stacked in the order seen."""
    for y, mode in enumerate(modes):
        stages = sorted(report["modes"][mode].get("timeline", {}).items(), key=lambda kv: kv[1]["median"])
        x = 0.0
        for stage, stat in stages:
            end = stat["median"] / 1000
            ax.barh(y, max(0.0, end - x), left=x, color=STAGE_COLORS.get(stage, "#bbbbbb"),
                    label=stage if stage not in ax.get_legend_handles_labels()[1] else None)
            x = max(x, end)
    ax.set_yticks(range(len(modes)), modes)
    ax.set_xlabel("seconds after QEMU's spawn (median; each bar ends when its stage was seen)")
    ax.set_title("boot stages")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=8)


if __name__ == "__main__":
    try:
        main()
    except NotConverged as e:
        raise SystemExit(f"bench: {e}") from None
