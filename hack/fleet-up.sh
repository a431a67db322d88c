#!/usr/bin/env bash
# A development etcd for warmvm's fleet mode: hack/fleet-up.sh [N] [--netns PREFIX] [--dir DIR]
# starts N members (default 3) on loopback ports, or each in a network namespace of its own with
# --netns, and prints the endpoints (for --store or $WARMVM_STORE). `hack/fleet.py host NAME`
# adds a simulated host's namespace to a --netns cluster; hack/fleet-down.sh removes all of it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v etcd >/dev/null || bash "$here/install-deps.sh"
exec python3 "$here/fleet.py" up "$@"
