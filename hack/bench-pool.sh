#!/usr/bin/env bash
# make bench-pool: the TAP pool benchmark, in a private network namespace that is
# always removed (with every device in it), even on Ctrl-C or failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap netns_del EXIT INT TERM
netns_add wvbench
netns_exec .venv/bin/python hack/bench_pool.py "$@"
