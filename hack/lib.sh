# Sourced by the scripts in hack/: run from the repository's root, with what the
# project needs installed (host packages, .venv), as `make setup` does, so that
# every script works when run directly on a fresh clone.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
make --no-print-directory -s setup >&2

# A benchmark's private network namespace, removed with every device in it: netns_add PREFIX makes
# one (PREFIX-PID-RANDOM, in $ns once it exists) with its loopback up, netns_exec runs a command in
# it, netns_del removes it (if there is one). Set the trap that calls netns_del before netns_add.
netns_add() {
	local name="$1-$$-$RANDOM"
	ip netns add "$name"
	ns=$name
	ip netns exec "$ns" ip link set lo up
}
netns_exec() { ip netns exec "$ns" "$@"; }
netns_del() {
	if [[ -n ${ns:-} ]]; then ip netns del "$ns" 2>/dev/null || true; fi
}
