"""Spec files -> validated desired state (documents: YAML with line numbers; schema; load)."""
