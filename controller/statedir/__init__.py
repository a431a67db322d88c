"""The state directory: where each record and file lives (layout), and how it is written (store)."""
