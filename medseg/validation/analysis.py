"""Aggregates over cases and subgroups (manufacturer, slice thickness band, phase, site) with patient bootstrap CIs."""

from __future__ import annotations

from typing import Any

from medseg.metrics import aggregate
from medseg.validation.independence import normalise_patient

METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "nsd", "volume_diff_ml", "volume_diff_pct", "abs_volume_diff_pct",
           "sensitivity", "precision", "fn_rate")  # fmt: skip
SUBGROUP_METRICS = ("dice", "hd95_mm")


def thickness_band(mm: float | None) -> str:
    """Slice thickness band: thin (< 3 mm), medium (3-5 mm), thick (>= 5 mm) or unknown."""
    if mm is None:
        return "unknown"
    return "thin (<3 mm)" if mm < 3.0 else ("medium (3-5 mm)" if mm < 5.0 else "thick (>=5 mm)")


def factors(acquisition: dict[str, Any]) -> dict[str, str]:
    """The subgroup factors of one case from its acquisition facts."""
    return {
        "manufacturer": str(acquisition.get("manufacturer") or "unknown"),
        "slice_thickness_band": thickness_band(acquisition.get("slice_thickness_mm")),
        "phase": str(acquisition.get("phase") or "unknown"),
        "site": str(acquisition.get("site") or "unknown"),
    }


def case_values(case: dict[str, Any], organ: str) -> dict[str, float]:
    """The per-case metric values used in aggregation (including |volume difference %|)."""
    m = case["metrics"][organ]
    return {k: m[k] for k in METRICS if k in m} | {"abs_volume_diff_pct": abs(m["volume_diff_pct"])}


def aggregates(
    cases: list[dict[str, Any]], organ: str, seed: int, resamples: int, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Every metric's aggregate over all cases, bootstrapped by patient, its CI the criteria file's `level`."""
    patients = [normalise_patient(c["patient"]) for c in cases]
    values = [case_values(c, organ) for c in cases]
    return {
        m: aggregate([v[m] for v in values], patients, seed, resamples, level).to_json() | {"ci_level": level}
        for m in METRICS
    }


def subgroups(
    cases: list[dict[str, Any]], organ: str, names: list[str], seed: int, resamples: int, level: float = 0.95
) -> list[dict]:
    """For each factor and value: n, mean and CI (at `level`) of Dice and HD95; `interpretable` False under 3
    patients."""
    rows = []
    for factor in names:
        groups: dict[str, list[dict[str, Any]]] = {}
        for c in cases:
            groups.setdefault(factors(c["acquisition"])[factor], []).append(c)
        for value, members in sorted(groups.items()):
            patients = [normalise_patient(c["patient"]) for c in members]
            for metric in SUBGROUP_METRICS:
                agg = aggregate([case_values(c, organ)[metric] for c in members], patients, seed, resamples, level)
                rows.append({"factor": factor, "value": value, "metric": metric, **agg.to_json(), "ci_level": level})
    return rows
