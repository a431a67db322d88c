#!/usr/bin/env bash
# hack/build-image.sh [--force] [OUTDIR]       (default OUTDIR: state/demo-image)
#
# Builds the warmvm demo guest from Debian 12 packages, fetched with
# `apt-get download` and unpacked with dpkg-deb: nothing is installed on the
# host, nothing is mounted. Needs: apt-get, dpkg-deb, mkfs.ext4 (e2fsprogs),
# gzip, sha256sum, flock, gcc (static, for warmvm-identity and warmvm-agent). Cached and idempotent: when OUTDIR/.complete holds
# the hash of this script and of hack/image/{initramfs,rootfs,root}, it exits
# 0 at once (--force rebuilds). Debs are cached in OUTDIR/.debs.
#
# Outputs (OUTDIR/.complete is written last; without it nothing else counts):
#   vmlinuz        Debian 12 linux-image-*-cloud-amd64 kernel (bzImage, LZ4)
#   vmlinux        the same kernel, uncompressed, for PVH direct boot under -M microvm
#                  (no real-mode setup, no decompression: ~0.4 s less per boot under TCG)
#   initrd.img     gzip'd newc cpio: busybox + virtio modules + /init
#   rootfs.ext4    32 MiB ext4 (sparse, no journal), to be attached READ-ONLY
#                  and shared by all VMs: busybox, dropbear, /sbin/init,
#                  /sbin/warmvm-identity (a restored copy's identity, see identity.c),
#                  /sbin/warmvm-agent (the control channel's guest end, see agent.c) and
#                  its module (virtio_console), the power-button modules (button, evdev) for acpid
#   root/          demo contents of /root; the controller turns it (plus
#                  .ssh/authorized_keys) into each VM's ext4 WORK disk
#   (no host key: each VM gets its own from the controller, through fw_cfg)
#   packages.txt   the deb files used
#
# ---- Contract with the controller (details: hack/image/README.md) ----------
# QEMU (TCG; on a host with working KVM use -accel kvm -cpu host and drop
# tsc_early_khz):
#   qemu-system-x86_64 -M microvm,rtc=on -accel tcg -cpu max -m 256 -smp 1 \
#     -nodefaults -no-user-config -display none \
#     -serial file:console.log \
#     -kernel OUTDIR/vmlinuz -initrd OUTDIR/initrd.img \
#     -append "console=ttyS0 quiet tsc_early_khz=HOSTKHZ cryptomgr.notests warmvm.ip=10.88.0.2/24 warmvm.gw=10.88.0.1 warmvm.hostname=demo-1" \
#     -drive id=root,file=OUTDIR/rootfs.ext4,format=raw,if=none,readonly=on \
#     -device virtio-blk-device,drive=root,serial=warmvm-root \
#     -drive id=work,file=work.qcow2,format=qcow2,if=none \
#     -device virtio-blk-device,drive=work,serial=warmvm-work \
#     -netdev tap,id=n0,ifname=TAPNAME,script=no,downscript=no \
#     -device virtio-net-device,netdev=n0,mac=52:54:00:xx:xx:xx \
#     -qmp unix:qmp.sock,server=on,wait=off \
#     -device virtio-serial-device,max_ports=2 -chardev socket,id=ctl,path=ctl.sock,server=on,wait=off \
#     -device virtserialport,chardev=ctl,name=org.warmvm.control
#   tsc_early_khz=HOSTKHZ (host TSC in kHz, e.g. the first "cpu MHz" of
#   /proc/cpuinfo x 1000) is REQUIRED under TCG: without it, the guest's TSC
#   calibration against the PIT often fails on a busy host and the boot hangs.
#   cryptomgr.notests is optional: it skips the kernel's crypto self-tests,
#   about 0.5 s of a TCG boot.
#   -nographic in place of -display none works too. No virtio_mmio.device=
#   parameters are needed: microvm lists its virtio-mmio slots in ACPI (keep
#   acpi on). The work disk may be raw or qcow2 (ext4 inside).
# Disks are found by virtio serial, never by vda/vdb order:
#   serial=warmvm-root  the root fs, mounted read-only (ro,noload)
#   serial=warmvm-work  the work disk, ext4, mounted read-write on /root
#                       (if absent, /root is a tmpfs and SSH login fails)
# Kernel command line:
#   warmvm.ip=ADDR/PREFIX  warmvm.gw=GATEWAY  warmvm.hostname=NAME
#   optional: warmvm.dns=A[,B]  warmvm.rootserial=S  warmvm.workserial=S
#             warmvm.debug=1 (timing marks on the console)
# Control channel (optional): the virtio-serial port org.warmvm.control, served by
#   /sbin/warmvm-agent (agent.c: readiness status, commands); the host end is ctl.sock.
# SSH: dropbear on port 22, root login by public key only, keys read from
#   /root/.ssh/authorized_keys on the work disk (init fixes owner and modes).
# Console (ttyS0): "warmvm: ready (host NAME, ip ADDR, uptime Ns)" once
#   dropbear listens; "warmvm-initrd: FATAL ..." then power-off (QEMU exits)
#   if the root disk is missing.
# Stop: QMP system_powerdown (ACPI power button). From shortly after the ready
#   line, the guest kills its processes, unmounts the work disk cleanly and
#   powers off: QEMU exits by itself, typically within 0.3 s under TCG.
# -----------------------------------------------------------------------------
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HACK/.." && pwd)
IMG=$HACK/image

FORCE=0
if [[ ${1:-} == --force ]]; then FORCE=1; shift; fi
OUT=${1:-$REPO/state/demo-image}

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: ERROR: %s\n' "$*" >&2; exit 1; }

# The demo image's work seed, made through the controller's own seed code (one implementation, one
# fingerprint) in the state directory `make reconcile` uses, so that the very first VM of a fresh host
# clones it instead of building its disk from scratch. Only for the default OUTDIR, which specs/ names.
seed_step() {
	[[ $OUT == "$REPO/state/demo-image" && -d $REPO/specs ]] || return 0
	(cd "$REPO" && make --no-print-directory -s setup >&2 &&
		.venv/bin/python -m controller --specs specs --state state seed) ||
		die "generating the demo image's work seed failed"
}

ROOTFS_SIZE=32M
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_mmio virtio_blk failover net_failover virtio_net
	qemu_fw_cfg)   # the host hands each VM its identity (its SSH host key) through fw_cfg
EXT4_MODULES=(crc16 mbcache jbd2 crc32c_generic ext4)   # only if ext4 is modular
# In the ROOT fs, loaded by /sbin/init after "ready": the ACPI power button
# (QMP system_powerdown) and evdev, which acpid reads it from.
ROOTFS_MODULES=(button evdev)
# In the ROOT fs too, loaded by /sbin/warmvm-agent itself (finit_module, no fork) as it starts: the
# control channel's virtio-serial port.
AGENT_MODULES=(virtio_console)
USER_PKGS=(busybox-static dropbear-bin libc6 libcrypt1 libtomcrypt1 libtommath1 libgmp10 zlib1g)
KERNEL_META=linux-image-cloud-amd64

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Version of the inputs: this script plus the guest files (paths, modes, data).
version() {
	{
		cat "$HACK/build-image.sh" "$IMG/extract-vmlinux.py" "$IMG/identity.c" "$IMG/agent.c" | sha256sum | cut -d' ' -f1
		(cd "$IMG" && find initramfs rootfs root -print0 | LC_ALL=C sort -z |
			while IFS= read -r -d '' f; do
				if [[ -f $f ]]; then
					printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
				else
					printf '%s %s\n' "$f" "$(stat -c %F "$f")"
				fi
			done)
	} | sha256sum | cut -c1-16
}
VERSION="build-image $(version)"

complete() {
	[[ -f $OUT/.complete && "$(cat "$OUT/.complete")" == "$VERSION" &&
		-s $OUT/vmlinuz && -s $OUT/vmlinux && -s $OUT/initrd.img && -s $OUT/rootfs.ext4 && -d $OUT/root ]]
}
if [[ $FORCE == 0 ]] && complete; then
	log "up to date: $OUT"
	seed_step
	exit 0
fi

for t in apt-get apt-cache dpkg-deb tar mkfs.ext4 gzip sha256sum flock truncate awk lz4 python3 gcc; do
	command -v "$t" >/dev/null || die "$t not found (run hack/install-deps.sh)"
done

# One build at a time per OUTDIR.
exec 9>"$OUT/.lock"
flock 9
if [[ $FORCE == 0 ]] && complete; then
	log "up to date: $OUT (built by another process)"
	seed_step
	exit 0
fi

T0=$(date +%s)
rm -rf "$OUT"/.build.* "$OUT/.complete.tmp" "$OUT/.hostkey.tmp" # left by a killed build (we hold the lock)
DEBS=$OUT/.debs
mkdir -p "$DEBS"
TMP=$(mktemp -d "$OUT/.build.XXXXXX")
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- 1. resolve and fetch the debs ------------------------------------------
APT=(apt-get -q -o APT::Sandbox::User=root)
kernel_pkg() { apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
KPKG=$(kernel_pkg || true)
if [[ -z $KPKG ]]; then
	log "apt lists have no $KERNEL_META: running apt-get update"
	"${APT[@]}" update -qq >&2 || die "apt-get update failed"
	KPKG=$(kernel_pkg || true)
	[[ -n $KPKG ]] || die "cannot resolve $KERNEL_META with apt-cache depends"
fi
PKGS=("$KPKG" "${USER_PKGS[@]}")
log "packages: ${PKGS[*]}"

# --print-uris from an empty dir lists every deb (apt omits files already in cwd).
mkdir "$TMP/empty"
(cd "$TMP/empty" && apt-get download --print-uris "${PKGS[@]}") >"$TMP/uris" ||
	die "apt-get download --print-uris failed"
declare -A DEBFILE=()
missing=()
while read -r uri file size hash; do
	file=${file//\'/}
	pkg=${file%%_*}
	DEBFILE[$pkg]=$file
	want=${hash#SHA256:}
	if [[ -f $DEBS/$file ]] && [[ $(sha256sum <"$DEBS/$file" | cut -d' ' -f1) == "$want" ]]; then
		continue
	fi
	rm -f "$DEBS/$file"
	missing+=("$pkg")
done <"$TMP/uris"
for p in "${PKGS[@]}"; do [[ -n ${DEBFILE[$p]:-} ]] || die "apt did not resolve $p"; done
if ((${#missing[@]})); then
	log "downloading ${#missing[@]} debs into $DEBS"
	# Into a temp dir first, so a kill cannot leave a truncated deb in the cache.
	mkdir "$TMP/dl"
	(cd "$TMP/dl" && "${APT[@]}" download "${missing[@]}" >&2) || die "apt-get download failed"
	mv "$TMP/dl"/*.deb "$DEBS/"
else
	log "all debs cached in $DEBS"
fi
for p in "${PKGS[@]}"; do printf '%s\n' "${DEBFILE[$p]}"; done >"$TMP/packages.txt"

# ---- 2. unpack ---------------------------------------------------------------
X=$TMP/x          # user space debs
KX=$TMP/kx        # kernel (only what we need)
mkdir -p "$X" "$KX"
for p in "${USER_PKGS[@]}"; do dpkg-deb -x "$DEBS/${DEBFILE[$p]}" "$X"; done
log "unpacking kernel $KPKG"
ko_glob() { printf '%s' "${1//_/[_-]}"; } # module foo_bar may be foo-bar.ko
kx_extract() { # extract vmlinuz, modules.builtin and the named modules only
	local pats=('./boot/vmlinuz-*' './lib/modules/*/modules.builtin') m
	for m in "$@"; do pats+=("./lib/modules/*/$(ko_glob "$m").ko" "./lib/modules/*/$(ko_glob "$m").ko.*"); done
	# tar exits 2 for patterns that match nothing (built-in modules): expected.
	dpkg-deb --fsys-tarfile "$DEBS/${DEBFILE[$KPKG]}" | tar -x -C "$KX" --wildcards "${pats[@]}" 2>/dev/null || true
}
kx_extract "${MODULES[@]}" "${EXT4_MODULES[@]}" "${ROOTFS_MODULES[@]}" "${AGENT_MODULES[@]}"
KVER=$(cd "$KX/lib/modules" && ls | head -n1)
[[ -n $KVER && -f $KX/boot/vmlinuz-$KVER ]] || die "kernel image not found in $KPKG"
KMOD=$KX/lib/modules/$KVER
BB=$X/bin/busybox
[[ -x $BB ]] || die "busybox not found in busybox-static"
LIBDIRS=$X/lib/x86_64-linux-gnu:$X/usr/lib/x86_64-linux-gnu
LDSO=$X/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[[ -x $LDSO ]] || die "ld.so not found in libc6"
run_unpacked() { "$LDSO" --library-path "$LIBDIRS" "$@"; }

# ---- 3. initrd.img -----------------------------------------------------------
I=$TMP/initramfs
mkdir -p "$I"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,newroot,tmp,run}
cp "$BB" "$I/bin/busybox"
applet_links() { # $1 = root dir; all applets as symlinks to /bin/busybox
	local root=$1 a
	while read -r a; do
		[[ $a == bin/busybox || $a == linuxrc || $a == sbin/init ]] && continue
		[[ -e $root/$a || -L $root/$a ]] || ln -s /bin/busybox "$root/$a"
	done < <("$BB" --list-full)
}
applet_links "$I"
install -m 0755 "$IMG/initramfs/init" "$I/init"

is_builtin() { grep -qE "/${1//_/[_-]}\.ko(\.[a-z]+)?\$" "$KMOD/modules.builtin"; }
find_ko() { find "$KMOD" \( -name "$(ko_glob "$1").ko" -o -name "$(ko_glob "$1").ko.*" \) -print -quit; }
declare -A SEEN=()   # modules already handled (in the initrd or built in)
ORDER=()
MODDIR=$I/lib/modules
add_module() { # into $MODDIR and ORDER, depth-first: dependencies (from .modinfo) first
	local m=$1 f deps d
	[[ -n ${SEEN[$m]:-} ]] && return 0
	SEEN[$m]=1
	if is_builtin "$m"; then log "module $m: built in"; return 0; fi
	f=$(find_ko "$m")
	if [[ -z $f ]]; then kx_extract "$m"; f=$(find_ko "$m"); fi # a dependency not extracted yet
	if [[ -z $f ]]; then log "module $m: not in this kernel, skipped"; return 0; fi
	case $f in
	*.ko) cp "$f" "$MODDIR/$m.ko" ;;
	*.ko.xz) xz -dc "$f" >"$MODDIR/$m.ko" ;;
	*.ko.zst) zstd -qdc "$f" >"$MODDIR/$m.ko" ;;
	*.ko.gz) gzip -dc "$f" >"$MODDIR/$m.ko" ;;
	*) die "unknown module format: $f" ;;
	esac
	deps=$(tr '\0' '\n' <"$MODDIR/$m.ko" | sed -n 's/^depends=//p' | head -n1)
	for d in ${deps//,/ }; do add_module "${d//-/_}"; done
	ORDER+=("$m")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
if is_builtin ext4; then
	log "module ext4: built in"
else
	for m in "${EXT4_MODULES[@]}"; do add_module "$m"; done
fi
printf '%s\n' "${ORDER[@]}" >"$I/lib/modules/load-order"
log "initrd modules: ${ORDER[*]}"
(cd "$I" && find . -mindepth 1 | LC_ALL=C sort |
	"$BB" cpio -o -H newc --renumber-inodes --ignore-devno 2>/dev/null) |
	gzip -9n >"$TMP/initrd.img"
cp "$KX/boot/vmlinuz-$KVER" "$TMP/vmlinuz"
python3 "$HACK/image/extract-vmlinux.py" "$TMP/vmlinuz" "$TMP/vmlinux" >&2 || die "extracting vmlinux failed"

# ---- 4. rootfs.ext4 ----------------------------------------------------------
R=$TMP/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib64,etc/dropbear,proc,sys,dev,tmp,run,var,mnt,root}
chmod 0700 "$R/root"
chmod 1777 "$R/tmp"
cp "$BB" "$R/bin/busybox"
applet_links "$R"
cp -R --preserve=mode,timestamps "$IMG/rootfs/." "$R/"
chmod 0755 "$R/sbin/init"
chmod 0644 "$R"/etc/{passwd,group,shells,nsswitch.conf,inittab,profile}
chmod 0640 "$R/etc/shadow"
ln -s /run/hosts "$R/etc/hosts"
ln -s /run/resolv.conf "$R/etc/resolv.conf"
ln -s /proc/self/mounts "$R/etc/mtab"
echo warmvm >"$R/etc/hostname"
chmod 0755 "$R/sbin/warmvm-shutdown" "$R/etc/acpi/PWRF/00000080"
# A restored snapshot's copy takes its own identity with it (RNG reseed, clock, host key): static,
# so it needs nothing from the image's libraries.
gcc -static -Os -s -Wall -Werror -o "$R/sbin/warmvm-identity" "$IMG/identity.c" ||
	die "compiling warmvm-identity failed (gcc and libc6-dev: run hack/install-deps.sh)"
# The control channel's guest end (readiness, `warmvm exec`): static as well.
gcc -static -Os -s -Wall -Werror -o "$R/sbin/warmvm-agent" "$IMG/agent.c" ||
	die "compiling warmvm-agent failed (gcc and libc6-dev: run hack/install-deps.sh)"

# Power-button modules for /sbin/init (dependencies already in the initrd
# are loaded there and left out here).
mkdir -p "$R/lib/modules"
ORDER=()
MODDIR=$R/lib/modules
for m in "${ROOTFS_MODULES[@]}"; do add_module "$m"; done
printf '%s\n' "${ORDER[@]}" >"$R/lib/modules/load-order"
log "root fs modules: ${ORDER[*]}"
ORDER=()
for m in "${AGENT_MODULES[@]}"; do add_module "$m"; done
printf '%s\n' "${ORDER[@]}" >"$R/lib/modules/channel-order"
log "control channel modules: ${ORDER[*]:-(built in)}"

# dropbear, its key tools and the shared libraries they need, resolved with the unpacked ld.so
# so that every library comes from the Debian 12 debs, not from the host. No host key in the image:
# every VM gets its own from the host at boot (fw_cfg, in dropbear's format, see /sbin/init);
# dropbearkey makes one only if none is given.
cp "$X/usr/sbin/dropbear" "$R/usr/sbin/dropbear"
cp "$X/usr/bin/dropbearkey" "$R/usr/bin/dropbearkey"
: >"$TMP/ldd"
for bin in "$X/usr/sbin/dropbear" "$X/usr/bin/dropbearkey"; do
	run_unpacked --list "$bin" >>"$TMP/ldd" || die "ld.so --list $bin failed"
done
if grep -q 'not found' "$TMP/ldd"; then die "dropbear: missing libraries: $(grep 'not found' "$TMP/ldd")"; fi
while read -r lib; do
	case $lib in
	"$X"/*) ;;
	*) die "dropbear library $lib does not come from the unpacked debs (add its package to USER_PKGS)" ;;
	esac
	rel=${lib#"$X"/}
	mkdir -p "$R/$(dirname "$rel")"
	cp -L "$lib" "$R/$rel"
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3}' "$TMP/ldd" | sort -u)
ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
[[ -f $R/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ]] || cp -L "$LDSO" "$R/lib/x86_64-linux-gnu/"
rm -f "$OUT/.hostkey" "$OUT/host_key.pub"  # from images that still had one shared key

log "making rootfs.ext4 ($ROOTFS_SIZE)"
# Every file in the image belongs to root, whoever owns the checkout.
[[ $(id -u) != 0 ]] || chown -R -h 0:0 "$R"
truncate -s "$ROOTFS_SIZE" "$TMP/rootfs.ext4"
mkfs.ext4 -q -F -b 4096 -L warmvm-root -O ^has_journal \
	-E lazy_itable_init=1,root_owner=0:0 -d "$R" "$TMP/rootfs.ext4" >&2 ||
	die "mkfs.ext4 failed"

# ---- 5. demo /root -----------------------------------------------------------
mkdir "$TMP/root"
cp -R --preserve=mode,timestamps "$IMG/root/." "$TMP/root/"
chmod 0700 "$TMP/root"
if [[ $(id -u) == 0 ]]; then
	chown -R 0:0 "$TMP/root" # the checkout may belong to another user
else
	log "WARNING: not root: the files of root/ keep uid $(id -u)"
fi

# ---- 6. move into place, stamp last -----------------------------------------
rm -f "$OUT/.complete"
for f in vmlinuz vmlinux initrd.img rootfs.ext4 packages.txt; do
	mv -f "$TMP/$f" "$OUT/$f"
done
if [[ -e $OUT/root ]]; then mv "$OUT/root" "$TMP/old-root"; fi
mv "$TMP/root" "$OUT/root"
sync -f "$OUT/rootfs.ext4" 2>/dev/null || true
printf '%s\n' "$VERSION" >"$OUT/.complete.tmp"
mv -f "$OUT/.complete.tmp" "$OUT/.complete"
log "done in $(($(date +%s) - T0)) s: $OUT (kernel $KVER)"
seed_step
