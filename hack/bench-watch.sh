#!/usr/bin/env bash
# make bench-watch: the daemon benchmark (wake-up latencies, refill beside a boot, idle CPU), in a
# private network namespace that is always removed (with every device in it), even on Ctrl-C or failure.
#   hack/bench-watch.sh [--runs N] [--idle SECONDS] [--json FILE]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bash hack/build-image.sh  # the demo guest, fetched with apt-get: before entering the namespace
trap netns_del EXIT INT TERM
netns_add wvwatch
netns_exec .venv/bin/python hack/bench_watch.py "$@"
