"""What the tests share, each thing once: test modules import from here (fixtures come from conftest).

- cli: the CLI as a child process (`warmvm`, `reconcile`), spec text, the state files it leaves
- images: a fake image (a kernel by its header, a real ext4 rootfs) and the demo image's spec
- netns: a private network namespace for a test, and the QEMU processes a test started
- daemon: `warmvm watch` as a child process, its log and metrics read while it runs
- waits: `wait_for`, polling for an observable condition with a deadline
- plancase: the reader of planner cases (tests/plan/*.yaml) into the planners' observed state
"""
