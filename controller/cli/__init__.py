"""The command line, the outermost shell: `warmvm` (main), its `get` views, `warmvm agent` and
`warmvm fleet`."""
