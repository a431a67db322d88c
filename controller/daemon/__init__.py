"""`warmvm watch`, the daemon: passes woken by events, boot waits beside them, metrics, status."""
