#!/usr/bin/env bash
# make bench-fleet: a 3-member etcd and N agents, each host a network namespace of its own (hack/fleet.py),
# all of it removed afterwards, even on Ctrl-C or failure.
#   hack/bench-fleet.sh [--hosts N] [--vms N] [--idle SECONDS] [--runs N] [--json FILE]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bash hack/build-image.sh  # the demo guest: before any namespace exists
exec .venv/bin/python hack/bench_fleet.py "$@"
