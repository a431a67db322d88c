#!/usr/bin/env bash
# hack/image/try-boot.sh [OUTDIR]     (default OUTDIR: state/demo-image)
#
# Boots the image built by hack/build-image.sh once (RUNS=N for N boots) in a
# throwaway network namespace, logs in with SSH and prints the time from QEMU
# start to the first successful SSH command. Needs root, qemu-system-x86_64,
# qemu-img, mkfs.ext4, ssh, ssh-keygen. Cleans up everything it made (QEMU,
# namespace and its bridge/TAP, temp dir) on exit, failure or signal.
#
# Env: RUNS=1  ACCEL=tcg (or kvm)  DEADLINE=60 (s per boot)  KEEP_LOGS=0
#      EXTRA_APPEND="..." (added to the kernel command line, e.g. warmvm.debug=1)
#      BAD_PERMS=1 (work disk with /root 0777 and .ssh owned by uid 1000, to
#      check that the guest init repairs what dropbear would refuse)
#      TSC_KHZ=N (default: from the host's /proc/cpuinfo, see host_tsc_khz)
#      POWERDOWN=1 (default): after the SSH check, write a file into /root over
#      SSH (no sync), send QMP system_powerdown (what the controller does to
#      stop a VM) and time how long QEMU takes to exit by itself (at most
#      PD_DEADLINE=10 s); then check that the file is on the work disk and
#      that the disk's ext4 is clean (e2fsck -fn, state "clean"). POWERDOWN=0
#      skips this. PD_STUBBORN=1 also leaves a process in the guest that
#      ignores SIGTERM and SIGHUP and keeps a file in /root open for writing
#      (the shutdown must SIGKILL it before it can unmount /root).
#      PD_VIA=ssh runs `poweroff` in the guest over SSH in place of
#      system_powerdown (busybox init's path: about 2 s slower).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=$(cd "${1:-$REPO/state/demo-image}" && pwd)
RUNS=${RUNS:-1}
ACCEL=${ACCEL:-tcg}
DEADLINE=${DEADLINE:-60}
NS=wvimg-$$
TAP=wvt0
GUEST=10.88.0.2
HOSTIP=10.88.0.1

log() { printf 'try-boot: %s\n' "$*" >&2; }
die() { printf 'try-boot: FAILED: %s\n' "$*" >&2; exit 1; }

[[ -f $OUT/.complete ]] || die "$OUT is not a complete image (run hack/build-image.sh)"
POWERDOWN=${POWERDOWN:-1}
PD_DEADLINE=${PD_DEADLINE:-10}
if [[ ${PD_VIA:-qmp} == ssh ]]; then PD_WHAT="poweroff over SSH"; else PD_WHAT=system_powerdown; fi
tools=(qemu-system-x86_64 qemu-img mkfs.ext4 ssh ssh-keygen ip)
if [[ $POWERDOWN == 1 ]]; then tools+=(python3 debugfs e2fsck dumpe2fs sha256sum); fi
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null || die "$t not found"
done

TMP=$(mktemp -d /tmp/wvimg.XXXXXX)
QPID=
stop_qemu() {
	if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then
		kill "$QPID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$QPID" 2>/dev/null || true
		wait "$QPID" 2>/dev/null || true
	fi
	QPID=
}
cleanup() {
	local rc=$?
	stop_qemu
	ip netns del "$NS" 2>/dev/null || true
	if [[ ${KEEP_LOGS:-0} == 1 ]]; then
		log "logs kept in $TMP"
	else
		rm -rf "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# 1. namespace, bridge, TAP.
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add "$HOSTIP/24" dev br0
ip -n "$NS" link set br0 up
ip netns exec "$NS" ip tuntap add mode tap name "$TAP"
ip -n "$NS" link set "$TAP" master br0 up

# Work disk: root/ + .ssh/authorized_keys, as ext4, under a qcow2 overlay.
ssh-keygen -q -t ed25519 -N '' -C try-boot -f "$TMP/id"
cp -a "$OUT/root" "$TMP/work"
mkdir -m 0700 "$TMP/work/.ssh"
install -m 0600 "$TMP/id.pub" "$TMP/work/.ssh/authorized_keys"
if [[ ${BAD_PERMS:-0} == 1 ]]; then
	chmod 0777 "$TMP/work"
	chmod 0775 "$TMP/work/.ssh"
	chmod 0664 "$TMP/work/.ssh/authorized_keys"
	chown -R 1000:1000 "$TMP/work/.ssh"
fi
truncate -s 64M "$TMP/work.raw"
mkfs.ext4 -q -F -L warmvm-work -E lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0 \
	-d "$TMP/work" "$TMP/work.raw" 64M
# The guest's own host key, handed over through fw_cfg in dropbear's format as the controller does
# (the image holds none), and pinned in known_hosts.
ssh-keygen -q -t ed25519 -N '' -C try-boot-host -f "$TMP/hostkey"
PYTHONPATH=$REPO python3 -c 'import sys; from controller.adapters.ssh import dropbear_key
sys.stdout.buffer.write(dropbear_key(open(sys.argv[1]).read()))' "$TMP/hostkey" >"$TMP/hostkey.dropbear" ||
	die "converting the host key to dropbear's format failed"
printf '%s %s\n' "$GUEST" "$(cut -d' ' -f1,2 "$TMP/hostkey.pub")" >"$TMP/known_hosts"

# Under TCG the guest kernel must be told the TSC frequency (tsc_early_khz):
# its own calibration against the PIT often fails when the host is busy, and
# the boot then hangs (see README.md). Guest TSC = host TSC under TCG.
host_tsc_khz() {
	awk -F: '/^cpu MHz/ {printf "%d\n", $2 * 1000 + 0.5; exit}' /proc/cpuinfo
}
TSC_KHZ=${TSC_KHZ:-$(host_tsc_khz)}
[[ $TSC_KHZ =~ ^[0-9]+$ && $TSC_KHZ -gt 0 ]] || die "cannot read the host TSC frequency; set TSC_KHZ"
APPEND_TSC="tsc_early_khz=$TSC_KHZ cryptomgr.notests"
if [[ $ACCEL == kvm ]]; then APPEND_TSC=cryptomgr.notests; fi

SSH=(ip netns exec "$NS" ssh -i "$TMP/id" -o BatchMode=yes -o StrictHostKeyChecking=yes
	-o UserKnownHostsFile="$TMP/known_hosts" -o ConnectTimeout=2 -o LogLevel=ERROR "root@$GUEST")
if [[ $ACCEL == kvm ]]; then CPU=host; else CPU=max; fi

now() { date +%s.%N; }

# QMP: system_powerdown (or, with PD_VIA=ssh, `poweroff` over SSH), then
# wait (at most PD_DEADLINE s) until the QEMU process is gone or a zombie.
# Prints "SECONDS SHUTDOWN-REASON"; exits 1 if QEMU is still running at the
# deadline.
powerdown_and_wait() { # $1 = QMP socket, $2 = QEMU pid
	python3 - "$1" "$2" "$PD_DEADLINE" "${PD_VIA:-qmp}" "${SSH[@]}" <<'PY'
import json, select, socket, subprocess, sys, time
path, pid, deadline, via = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ssh = sys.argv[5:]
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(path)
f = s.makefile("rwb", buffering=0)
reason = "-"
def recv():
    global reason
    line = f.readline()
    if not line:
        return None
    m = json.loads(line)
    if m.get("event") == "SHUTDOWN":
        reason = m.get("data", {}).get("reason", "?")
    return m
def execute(cmd):
    f.write(json.dumps({"execute": cmd}).encode() + b"\n")
    while True:
        m = recv()
        if m is None or "event" not in m:
            break
    if m is None or "error" in m:
        sys.exit(f"QMP {cmd}: {m}")
recv()  # greeting
execute("qmp_capabilities")
t0 = time.monotonic()
if via == "ssh":
    subprocess.run(ssh + ["poweroff"], check=True)
else:
    execute("system_powerdown")
def gone():
    try:
        with open(f"/proc/{pid}/stat") as st:
            return st.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
eof = False
while not gone():
    if time.monotonic() - t0 > deadline:
        print(f"{time.monotonic() - t0:.2f} {reason}")
        sys.exit(1)
    if not eof and select.select([s], [], [], 0.01)[0]:
        try:
            eof = recv() is None
        except (OSError, ValueError):
            eof = True
    elif eof:
        time.sleep(0.01)
print(f"{time.monotonic() - t0:.2f} {reason}")
PY
}

# After a powerdown: is the file written over SSH (sha256 $1) on the work
# disk, and is the disk's ext4 clean? Fills PD_FAIL.
check_work_disk() {
	local img=$TMP/work-after.raw got state
	rm -f "$img"
	qemu-img convert -f qcow2 -O raw "$TMP/work.qcow2" "$img"
	got=$(debugfs -R 'cat /powerdown-test' "$img" 2>/dev/null | sha256sum | cut -d' ' -f1)
	[[ $got == "$1" ]] || PD_FAIL+=("file written before the powerdown is missing or differs on the work disk")
	state=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Filesystem state/ {gsub(/^ +/, "", $2); print $2}')
	[[ $state == clean ]] || PD_FAIL+=("work disk ext4 state is '$state', not 'clean'")
	if dumpe2fs -h "$img" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'; then
		PD_FAIL+=("work disk journal needs recovery (not cleanly unmounted)")
	fi
	if ! e2fsck -fn "$img" >"$TMP/e2fsck.out" 2>&1; then
		cat "$TMP/e2fsck.out" >&2
		PD_FAIL+=("e2fsck -fn reports problems on the work disk")
	fi
	rm -f "$img"
}

times=()
pd_times=()
for run in $(seq "$RUNS"); do
	rm -f "$TMP/work.qcow2" "$TMP/console.log" "$TMP/qmp.sock"
	qemu-img create -q -f qcow2 -b "$TMP/work.raw" -F raw "$TMP/work.qcow2" 1G
	mac=$(printf '52:54:00:88:%02x:%02x' $((RANDOM % 256)) $((RANDOM % 256)))
	# 2. QEMU, exactly the controller's command line (see hack/image/README.md).
	t0=$(now)
	ip netns exec "$NS" qemu-system-x86_64 \
		-M microvm,rtc=on -accel "$ACCEL" -cpu "$CPU" -m 256 -smp 1 \
		-nodefaults -no-user-config -display none \
		-serial "file:$TMP/console.log" \
		-kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" \
		-append "console=ttyS0 quiet${APPEND_TSC:+ $APPEND_TSC} warmvm.ip=$GUEST/24 warmvm.gw=$HOSTIP warmvm.hostname=demo-$run${EXTRA_APPEND:+ $EXTRA_APPEND}" \
		-drive "id=root,file=$OUT/rootfs.ext4,format=raw,if=none,readonly=on" \
		-device virtio-blk-device,drive=root,serial=warmvm-root \
		-drive "id=work,file=$TMP/work.qcow2,format=qcow2,if=none" \
		-device virtio-blk-device,drive=work,serial=warmvm-work \
		-netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
		-device "virtio-net-device,netdev=n0,mac=$mac" \
		-qmp "unix:$TMP/qmp.sock,server=on,wait=off" \
		-fw_cfg "name=opt/warmvm/hostkey,file=$TMP/hostkey.dropbear" \
		</dev/null >"$TMP/qemu.out" 2>&1 &
	QPID=$!
	# 3. poll: console ready line (host side) and TCP port 22 (in the
	# namespace, 0.3 s connect timeout), then the SSH command.
	ok=0 t_ready= t_tcp=
	while :; do
		if ! kill -0 "$QPID" 2>/dev/null; then
			cat "$TMP/qemu.out" >&2
			break
		fi
		if [[ -z $t_ready ]] && grep -aq 'warmvm: ready' "$TMP/console.log" 2>/dev/null; then t_ready=$(now); fi
		if [[ -z $t_tcp ]] && ip netns exec "$NS" timeout 0.3 bash -c "exec 3<>/dev/tcp/$GUEST/22" 2>/dev/null; then
			t_tcp=$(now)
		fi
		if [[ -n $t_tcp ]]; then
			if "${SSH[@]}" 'uname -a; hostname; df -h /root; ls -la /root' >"$TMP/ssh.out" 2>"$TMP/ssh.err"; then
				ok=1
				break
			fi
		fi
		if (($(date +%s) - ${t0%.*} > DEADLINE)); then break; fi
		sleep 0.05
	done
	t1=$(now)
	ready=$(grep -a -m1 'warmvm: ready' "$TMP/console.log" || true)
	if [[ $ok != 1 ]]; then
		log "console.log:"
		cat "$TMP/console.log" >&2 || true
		log "last ssh error: $(cat "$TMP/ssh.err" 2>/dev/null)"
		die "run $run: no SSH within ${DEADLINE}s"
	fi
	since() { awk -v a="$t0" -v b="$1" 'BEGIN {printf "%.2f", b - a}'; }
	dt=$(since "$t1")
	times+=("$dt")
	if [[ $run == 1 ]]; then cat "$TMP/ssh.out"; fi
	if [[ -n $t_ready ]]; then t_ready="$(since "$t_ready")s"; else t_ready="(not polled in time)"; fi
	log "run $run: from QEMU start: ready line $t_ready, port 22 open $(since "$t_tcp")s, SSH command done ${dt}s"
	log "run $run: console: ${ready:-no ready line}"
	if [[ $POWERDOWN == 1 ]]; then
		# 4. a file written just before the powerdown, NOT synced: only a
		# clean shutdown in the guest gets it onto the disk.
		sum=$("${SSH[@]}" 'head -c 262144 /dev/urandom >/root/powerdown-test && sha256sum /root/powerdown-test') ||
			die "run $run: cannot write /root/powerdown-test over SSH"
		sum=${sum%% *}
		if [[ ${PD_STUBBORN:-0} == 1 ]]; then
			"${SSH[@]}" 'cd /root && sh -c "trap \"\" TERM HUP; exec 3>>/root/stubborn.log; while :; do echo tick >&3; usleep 100000; done" </dev/null >/dev/null 2>&1 &' ||
				die "run $run: cannot start the stubborn process over SSH"
		fi
		PD_FAIL=()
		if pd=$(powerdown_and_wait "$TMP/qmp.sock" "$QPID"); then
			wait "$QPID" && qrc=0 || qrc=$?
			QPID=
			[[ $qrc == 0 ]] || PD_FAIL+=("QEMU exited with status $qrc")
			[[ ${pd#* } == guest-shutdown ]] || PD_FAIL+=("QEMU shutdown reason '${pd#* }', not guest-shutdown")
		else
			PD_FAIL+=("QEMU did not exit within ${PD_DEADLINE}s of $PD_WHAT (${pd:-QMP error}): the guest ignored the power button?")
			stop_qemu
		fi
		check_work_disk "$sum"
		if ((${#PD_FAIL[@]})); then
			log "console.log:"
			cat "$TMP/console.log" >&2 || true
			for f in "${PD_FAIL[@]}"; do log "run $run: $f"; done
			die "run $run: powerdown check failed"
		fi
		pd_times+=("${pd%% *}")
		log "run $run: $PD_WHAT to QEMU exit ${pd%% *}s; file on disk, ext4 clean"
	fi
	stop_qemu
done
log "OK: ${RUNS} boot(s) ($ACCEL${APPEND_TSC:+, $APPEND_TSC}), boot-to-SSH seconds: ${times[*]}"
if [[ $POWERDOWN == 1 ]]; then
	log "OK: $PD_WHAT to QEMU exit, seconds: ${pd_times[*]}"
fi
