#!/usr/bin/env bash
# make bench: every benchmark the project has, then one summary.
#   hack/bench-all.sh [OUTDIR]   (default state/bench-out)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out=${1:-state/bench-out}
mkdir -p "$out"
bash hack/bench-pool.sh --json "$out/pool.json"
bash hack/bench-watch.sh --json "$out/watch.json"
.venv/bin/python hack/bench_disk.py --runs 3 --json "$out/disk.json"
bash hack/bench.sh --runs 3 --state-fs host --out "$out/create-host"
bash hack/bench.sh --runs 3 --state-fs xfs --out "$out/create-xfs"
bash hack/bench.sh --runs 1 --vms 8 --modes warm,restore --state-fs xfs --out "$out/create-xfs-8"
.venv/bin/python hack/bench_summary.py "$out"
