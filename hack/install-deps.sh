#!/usr/bin/env bash
# Installs what warmvm drives on the host: QEMU, e2fsprogs, xfsprogs (reflink test file
# systems), the SSH client, iproute2, nftables (guests' anti-spoofing and reach), lz4 (the image
# build unpacks the kernel for PVH boot), gcc and libc6-dev (the image build compiles the guest's
# small static warmvm-identity), etcd (the fleet's store: the server for hack/fleet-up.sh and the
# fleet tests, the client etcdctl for operators). QEMU needs no account: each VM's runs as a uid
# of its own (controller/base/uids.py). Idempotent; quiet when all is present.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils e2fsprogs xfsprogs openssh-client iproute2 nftables lz4 gcc libc6-dev
      etcd-server etcd-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
