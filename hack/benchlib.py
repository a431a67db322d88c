"""What the benchmarks in hack/ share: where the checkout is, summary statistics, spec documents,
the benchmark /root tree and a stopwatch. (Their network namespace is hack/lib.sh's.)

A script imports it first, before the controller: importing it puts this checkout first on
sys.path, so that a script run directly (`python3 hack/bench_disk.py`, from any directory) drives
this checkout's `controller`. The script's own directory, hack/, is on sys.path already.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HACK = Path(__file__).resolve().parent
REPO = HACK.parent
STATE = REPO / "state"  # caches (images, /root trees) and the default output
DEMO_IMAGE = STATE / "demo-image"  # hack/build-image.sh's
BENCH_OUT = STATE / "bench-out"  # the benchmarks' JSON and charts, unless told otherwise
sys.path.insert(0, str(REPO))


def summary(values: Sequence[float]) -> dict[str, float]:
    """A sample's min, median, max and size: the shape of every benchmark figure in the JSON."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def summary_as(keys: str, values: Sequence[float]) -> dict[str, float]:
    """A sample's median, min and max under flat keys, `keys` formatted with each:
    summary_as("noop_ms_{}", v) == {"noop_ms_median": ..., "noop_ms_min": ..., "noop_ms_max": ...}."""
    figures = summary(values)
    return {keys.format(k): figures[k] for k in ("median", "min", "max")}


def timed(fn: Callable[[], object]) -> float:
    """How long fn() took, in ms."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def document(kind: str, name: str, **spec: object) -> str:
    """A warmvm spec document; each field of its spec is written as given (a YAML scalar or flow mapping)."""
    fields = "".join(f"\n  {key}: {value}" for key, value in spec.items())
    return f"apiVersion: warmvm/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:{fields}\n"


def network_document(bridge: str, cidr: str, size: int, **pool: object) -> str:
    """The benchmarks' Network `bench`, with a TAP pool of `size` (and the pool's other fields)."""
    fields = ", ".join(f"{key}: {value}" for key, value in {"size": size, **pool}.items())
    return document("Network", "bench", bridge=bridge, cidr=cidr, tapPool=f"{{{fields}}}")


def image_document(name: str, image: Path, kernel: str, work_seed: str, **more: object) -> str:
    """An Image of a directory as hack/build-image.sh makes one (`kernel` is vmlinuz or vmlinux)."""
    return document("Image", name, kernel=image / kernel, initrd=image / "initrd.img",
                    rootfs=image / "rootfs.ext4", workSeed=work_seed, **more)


def root_tree(state: Path, size_mib: int, files: int) -> Path:
    """A realistic /root of `size_mib` MiB in `files` files (hack/make-root.py's), made once in `state`."""
    tree = state / f"bench-root-{size_mib}m-{files}f"
    subprocess.run([sys.executable, str(HACK / "make-root.py"), str(tree), "--size-mib", str(size_mib),
                    "--files", str(files)], check=True, stdin=subprocess.DEVNULL)
    return tree
