"""Time series behind the dashboard and monitor.json: trailing QC flag rates and the acquisition mix per block."""

from __future__ import annotations

from collections import Counter
from typing import Any

from medseg.monitor.facts import CaseFacts

RATE_WINDOW = 20
MIX_BLOCKS = 10


def flag_rates(cases: list[CaseFacts], code: str, window: int = RATE_WINDOW) -> list[float]:
    """The share of the last `window` cases (fewer at the start) carrying the flag, at every case."""
    hits = [code in c.flags for c in cases]
    return [
        round(sum(hits[max(0, i + 1 - window) : i + 1]) / len(hits[max(0, i + 1 - window) : i + 1]), 4)
        for i in range(len(hits))
    ]


THICKNESS_MIX = "slice thickness"


def _value(case: CaseFacts, feature: str) -> str:
    """A case's value of a category; slice thickness (else slice spacing) as a category rounded to 0.5 mm."""
    if feature == THICKNESS_MIX:
        mm = case.numbers.get("slice_thickness_mm", case.numbers.get("slice_spacing_mm"))
        return "(not recorded)" if mm is None else f"{round(mm * 2) / 2:g} mm"
    return case.categories.get(feature, "(not recorded)")


def category_mix(cases: list[CaseFacts], feature: str, blocks: int = MIX_BLOCKS) -> dict[str, Any]:
    """Shares of each value of a category in consecutive blocks of cases (block edges as 1-based case numbers)."""
    n = len(cases)
    size = max(1, -(-n // blocks))
    edges = list(range(0, n, size))
    values = sorted({_value(c, feature) for c in cases})
    shares: dict[str, list[float]] = {v: [] for v in values}
    for start in edges:
        block = Counter(_value(c, feature) for c in cases[start : start + size])
        total = sum(block.values())
        for v in values:
            shares[v].append(round(block[v] / total, 4))
    return {"block_start": [e + 1 for e in edges], "block_size": size, "shares": shares}


def time_series(
    reference: list[CaseFacts], monitored: list[CaseFacts], codes: list[str], features: list[str]
) -> dict[str, Any]:
    """Flag rates over every case (reference then monitored) and the mix of each varying category over time."""
    cases = [*reference, *monitored]
    varying = [f for f in [THICKNESS_MIX, *features] if len({_value(c, f) for c in cases}) > 1]
    return {
        "reference_end": len(reference),
        "rate_window": RATE_WINDOW,
        "flag_rates": {code: flag_rates(cases, code) for code in codes},
        "acquisition_mix": {f: category_mix(cases, f) for f in varying},
        "constant": {f: _value(cases[0], f) for f in features if f not in varying} if cases else {},
    }
