"""The table style of `make bench`: a name, the median, a unit, then the spread (min - max)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def row(name: str, values: Sequence[float], unit: str, fmt: str = "{:.1f}") -> str:
    s = spread(values)
    median, low, high = (fmt.format(s[k]) for k in ("median", "min", "max"))
    return f"  {name:<44} {median:>10} {unit:<8} ({low} - {high})"
