#!/usr/bin/env bash
# Installs the host packages warmvm drives: QEMU, e2fsprogs, xfsprogs (reflink
# test file systems), the SSH client, iproute2. Idempotent; quiet when all present.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils e2fsprogs xfsprogs openssh-client iproute2)
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
