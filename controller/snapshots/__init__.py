"""Boot snapshots: a template VM of an image, saved before it takes any identity, to restore VMs from."""
