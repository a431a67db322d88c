# Sourced by the scripts in hack/: run from the repository's root, with what the
# project needs installed (host packages, .venv), as `make setup` does, so that
# every script works when run directly on a fresh clone.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
make --no-print-directory -s setup >&2
