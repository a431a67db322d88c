"""Disk domain: work seeds and VM work disks (plan, state, observe, driver; ext4 does the file work)."""
