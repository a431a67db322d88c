#!/usr/bin/env bash
# Removes what hack/fleet-up.sh made: its etcd members (by pid), its namespaces, its data.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python3 "$here/fleet.py" down "$@"
