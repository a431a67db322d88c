#!/usr/bin/env bash
# The VM create benchmark (make bench-create ARGS="--runs 2"):
#   hack/bench.sh [--runs N] [--vms K] [--disk-size SIZE] [--state-fs host|xfs] [--out DIR]
#                 [--modes cold,warm,restore,reference,suspend (the default)] [--root-mib M] [--files F]
#                 [--exec-runs N (exec true / ssh true pairs on a running VM, default 10; 0: none)]
# Runs in a network namespace and a state directory of its own, both removed at
# the end (with every VM, device, mount and loop device in them), even on
# Ctrl-C or failure. See hack/bench_create.py for what is measured.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

state_fs=host
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --state-fs) state_fs="${args[$((i + 1))]}" ;;
    --state-fs=*) state_fs="${args[$i]#*=}" ;;
  esac
done
case "$state_fs" in host|xfs) ;; *) echo "bench: --state-fs must be host or xfs" >&2; exit 2 ;; esac

# the demo image is fetched with apt-get: build it (or find it cached) before entering the namespace,
# which has no route out
bash hack/build-image.sh

work=$(mktemp -d /tmp/warmvm-bench.XXXXXX)
cleanup() {
  # QEMUs started under the work directory, then the namespace, the mount, the files
  for pid in $(pgrep -f "qemu-system.*$work" || true); do kill -9 "$pid" 2>/dev/null || true; done
  netns_del
  if mountpoint -q "$work/xfs" 2>/dev/null; then umount "$work/xfs" || umount -l "$work/xfs" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

state="$work/state"
if [ "$state_fs" = xfs ]; then
  truncate -s 4G "$work/xfs.img"
  mkfs.xfs -q -m reflink=1 "$work/xfs.img"
  mkdir "$work/xfs"
  mount -o loop "$work/xfs.img" "$work/xfs"  # the loop device is detached by umount (autoclear)
  state="$work/xfs/state"
fi

netns_add wvbench
netns_exec .venv/bin/python hack/bench_create.py --work "$work" --state "$state" "$@"
