"""Means with seeded bootstrap 95 % confidence intervals, resampling patients (not cases); NaN is refused."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medseg.errors import ProcessingError

RESAMPLES = 2000
MIN_INTERPRETABLE = 3


@dataclass(frozen=True)
class Aggregate:
    """Mean, median, min, max and the bootstrap CI of one metric over cases; `interpretable` False below 3 cases."""

    n: int
    n_patients: int
    mean: float
    median: float
    minimum: float
    maximum: float
    ci_low: float
    ci_high: float
    interpretable: bool

    def to_json(self) -> dict[str, float | int | bool]:
        """As a flat dict."""
        return asdict(self)


def check_finite(values: Sequence[float | None], what: str) -> np.ndarray:
    """The values as floats; ProcessingError when one is None or NaN (a missed case must never drop out silently)."""
    bad = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))]
    if bad:
        raise ProcessingError(f"{what}: {len(bad)} value(s) are None/NaN (positions {bad[:5]}); refusing to aggregate")
    return np.asarray(values, dtype=float)


def bootstrap_mean_ci(
    values: Sequence[float], patients: Sequence[str], seed: int, resamples: int = RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of the mean, drawing whole patients with replacement (all of a patient's cases go together)."""
    x = check_finite(values, "bootstrap")
    ids = sorted(set(patients))
    groups = [x[[p == pid for p in patients]] for pid in ids]
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def aggregate(
    values: Sequence[float], patients: Sequence[str], seed: int, resamples: int = RESAMPLES, level: float = 0.95
) -> Aggregate:
    """Summary and patient-level bootstrap CI (central `level` interval) of one metric; refuses None/NaN."""
    if len(values) != len(patients) or not values:
        raise ProcessingError(f"aggregate needs one patient id per value and at least one value, got {len(values)}")
    x = check_finite(values, "aggregate")
    low, high = bootstrap_mean_ci(x, patients, seed, resamples, level)
    n_pat = len(set(patients))
    return Aggregate(
        n=len(x), n_patients=n_pat, mean=float(x.mean()), median=float(np.median(x)), minimum=float(x.min()),
        maximum=float(x.max()), ci_low=low, ci_high=high, interpretable=n_pat >= MIN_INTERPRETABLE,
    )  # fmt: skip
