"""Audits of the host: `doctor` (is this host ready for the specs?) and `verify` (did anything leak?)."""
