"""Sizes as people read them: the binary units specs are written in (Ki, Mi, Gi, Ti)."""

from __future__ import annotations

MiB = 1 << 20
GiB = 1 << 30

UNITS = (("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10))


def human(size: int) -> str:
    """`4Ti`, `1.5Gi`, `64Mi`, `512`: the largest unit it reaches, to two decimals at most."""
    for unit, shift in UNITS:
        if abs(size) >= 1 << shift:
            return f"{round(size / (1 << shift), 2):g}{unit}"
    return str(size)
