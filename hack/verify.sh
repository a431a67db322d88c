#!/usr/bin/env bash
# The leak audit (warmvm verify), as the project's scripts run it:
#   hack/verify.sh [--specs DIR] [--state DIR] [-o json]
# Exit 0 when nothing leaked, 1 when anything did. Sets up what it needs first.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
exec .venv/bin/python -m controller verify "$@"
