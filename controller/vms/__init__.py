"""VM domain: IP leases, QEMU boots, readiness and removal (plan, state, observe, driver; qemu, ssh)."""
