"""The statistics of monitoring: two-sample drift tests (scipy) and a Bernoulli CUSUM on QC flag rates."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from medseg.yamltext import load_yaml

THRESHOLDS_FILE = Path(__file__).with_name("thresholds.yaml")


@cache
def thresholds() -> dict[str, Any]:
    """The preset thresholds (thresholds.yaml)."""
    return load_yaml(THRESHOLDS_FILE.read_text())


@dataclass(frozen=True)
class NumericDrift:
    """Kolmogorov-Smirnov and Wasserstein comparison of one number between the reference and the recent window."""

    feature: str
    n_reference: int
    n_recent: int
    ks_statistic: float
    p_value: float
    wasserstein: float
    wasserstein_ratio: float
    reference_median: float
    recent_median: float
    alarm: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CategoricalDrift:
    """Chi-square comparison of one category's counts between the reference and the recent window."""

    feature: str
    reference_counts: dict[str, int]
    recent_counts: dict[str, int]
    chi2: float
    p_value: float
    cramers_v: float
    alarm: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Cusum:
    """A Bernoulli CUSUM of one QC flag over the monitored cases: statistic per case and the first alarm index."""

    code: str
    reference_rate: float
    p0: float
    p1: float
    limit: float
    statistic: list[float] = field(default_factory=list)
    alarm_index: int | None = None

    @property
    def alarm(self) -> bool:
        return self.alarm_index is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"alarm": self.alarm, "max_statistic": max(self.statistic, default=0.0)}


def _scale(reference: np.ndarray) -> float:
    """The reference's spread for the Wasserstein ratio: IQR, else standard deviation, else a tenth of the level."""
    q1, q3 = np.percentile(reference, [25, 75])
    for value in (q3 - q1, reference.std(), 0.1 * abs(float(np.median(reference)))):
        if value > 0:
            return float(value)
    return 1.0


def numeric_drift(feature: str, reference: list[float], recent: list[float]) -> NumericDrift:
    """Two-sample KS test and Wasserstein distance; an alarm needs a small p AND a large enough effect."""
    from scipy.stats import ks_2samp, wasserstein_distance

    t = thresholds()["numeric"]
    ref, rec = np.asarray(reference, float), np.asarray(recent, float)
    ks = ks_2samp(ref, rec)
    w = float(wasserstein_distance(ref, rec))
    ratio = w / _scale(ref)
    alarm = bool(
        ks.pvalue < t["alpha"] and ks.statistic >= t["min_ks_statistic"] and ratio >= t["min_wasserstein_ratio"]
    )
    return NumericDrift(
        feature,
        ref.size,
        rec.size,
        float(ks.statistic),
        float(ks.pvalue),
        w,
        ratio,
        float(np.median(ref)),
        float(np.median(rec)),
        alarm,
    )


def categorical_drift(feature: str, reference: list[str], recent: list[str]) -> CategoricalDrift:
    """Chi-square test of the 2 x k table of counts with Cramer's V as effect size; one category only: no drift."""
    from scipy.stats import chi2_contingency

    t = thresholds()["categorical"]
    ref, rec = Counter(reference), Counter(recent)
    levels = sorted(set(ref) | set(rec))
    if len(levels) < 2 or not reference or not recent:
        return CategoricalDrift(feature, dict(ref), dict(rec), 0.0, 1.0, 0.0, False)
    table = np.array([[ref[k] for k in levels], [rec[k] for k in levels]])
    result = chi2_contingency(table, correction=False)
    v = math.sqrt(result.statistic / table.sum())
    alarm = bool(result.pvalue < t["alpha"] and v >= t["min_cramers_v"])
    return CategoricalDrift(feature, dict(ref), dict(rec), float(result.statistic), float(result.pvalue), v, alarm)


def wilson_upper(hits: int, n: int, z: float) -> float:
    """Upper Wilson bound of a rate: a reference of a few dozen cases can understate the true rate by chance."""
    if n == 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, max(p, (centre + spread) / (1 + z * z / n)))


def cusum_limits(reference_rate: float) -> tuple[float, float]:
    """In-control rate p0 (floored) and the out-of-control rate p1 the CUSUM is tuned to detect."""
    t = thresholds()["cusum"]
    p0 = min(max(reference_rate, t["rate_floor"]), t["rate_cap"] - 0.05)
    p1 = min(max(p0 * t["rate_ratio"], p0 + t["min_increase"]), t["rate_cap"])
    return p0, p1


def bernoulli_cusum(code: str, reference: list[bool], monitored: list[bool]) -> Cusum:
    """Upper CUSUM of log-likelihood ratios S_t = max(0, S_t-1 + llr(x_t)); alarm at the first S_t above the limit."""
    t = thresholds()["cusum"]
    p0, p1 = cusum_limits(wilson_upper(sum(reference), len(reference), t["reference_z"]))
    up, down = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    s, series, alarm = 0.0, [], None
    for i, x in enumerate(monitored):
        s = max(0.0, s + (up if x else down))
        series.append(round(s, 4))
        if alarm is None and s > t["limit"]:
            alarm = i
    return Cusum(code, sum(reference) / max(len(reference), 1), p0, p1, float(t["limit"]), series, alarm)
