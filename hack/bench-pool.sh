#!/usr/bin/env bash
# make bench-pool: the TAP pool benchmark, in a private network namespace that is
# always removed (with every device in it), even on Ctrl-C or failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ns="wvbench-$$-$RANDOM"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT INT TERM
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" .venv/bin/python hack/bench_pool.py "$@"
