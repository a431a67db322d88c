#!/usr/bin/env bash
# Installs what warmvm drives on the host: QEMU, e2fsprogs, xfsprogs (reflink test file
# systems), the SSH client, iproute2, nftables (guests' anti-spoofing), lz4 (the image build
# unpacks the kernel for PVH boot), gcc and libc6-dev (the image build compiles the guest's
# small static warmvm-identity), etcd (the fleet's store: the server for hack/fleet-up.sh and the
# fleet tests, the client etcdctl for operators), and the unprivileged
# user QEMU runs as (warmvm-qemu). Idempotent; quiet when all is present.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils e2fsprogs xfsprogs openssh-client iproute2 nftables lz4 gcc libc6-dev
      etcd-server etcd-client)
QEMU_USER=warmvm-qemu
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
user_missing=0
getent passwd "$QEMU_USER" >/dev/null || user_missing=1
[ ${#missing[@]} -eq 0 ] && [ "$user_missing" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]} $([ "$user_missing" -eq 1 ] && echo "(and add the user $QEMU_USER)")" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$user_missing" -eq 1 ]; then
  echo "install-deps: adding the system user $QEMU_USER (QEMU drops to it)" >&2
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$QEMU_USER"
fi
