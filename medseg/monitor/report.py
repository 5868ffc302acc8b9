"""Compare a recent window of cases with a reference: drift per fact, CUSUM per QC flag, volumes against the range."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from medseg.errors import UsageError
from medseg.monitor.facts import CaseFacts
from medseg.monitor.stats import (
    CategoricalDrift,
    Cusum,
    NumericDrift,
    bernoulli_cusum,
    categorical_drift,
    numeric_drift,
    thresholds,
)

REPORT_SCHEMA = "medseg.monitor.report/1"
MAX_CASES_PER_ALARM = 20
NOT_RECORDED = "(not recorded)"
_RANGE = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class Alarm:
    """One alarm: what moved, the evidence in words and numbers, and the (pseudonymous) cases behind it."""

    kind: str
    feature: str
    message: str
    evidence: dict[str, Any]
    cases: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature": self.feature,
            "message": self.message,
            "evidence": self.evidence,
            "cases": self.cases,
        }


@dataclass(frozen=True)
class VolumeCheck:
    """Share of recent cases whose organ volume lies outside the model's plausible range."""

    organ: str
    expected_ml: tuple[float, float]
    reference_outside: float
    recent_outside: float
    alarm: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "organ": self.organ,
            "expected_ml": list(self.expected_ml),
            "reference_outside": self.reference_outside,
            "recent_outside": self.recent_outside,
            "alarm": self.alarm,
        }


@dataclass
class Report:
    """Everything `monitor report` found: windows, per-fact results, CUSUMs, volume checks and alarms."""

    reference: str
    n_reference: int
    n_monitored: int
    n_recent: int
    numeric: list[NumericDrift] = field(default_factory=list)
    categorical: list[CategoricalDrift] = field(default_factory=list)
    cusums: list[Cusum] = field(default_factory=list)
    volumes: list[VolumeCheck] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "reference": self.reference,
            "cases": {"reference": self.n_reference, "monitored": self.n_monitored, "recent": self.n_recent},
            "thresholds": thresholds(),
            "alarms": [a.to_json() for a in self.alarms],
            "numeric": [d.to_json() for d in self.numeric],
            "categorical": [d.to_json() for d in self.categorical],
            "cusum": [c.to_json() for c in self.cusums],
            "volumes": [v.to_json() for v in self.volumes],
            "skipped": self.skipped,
        }


def split_cases(cases: list[CaseFacts], reference: str | None) -> tuple[list[CaseFacts], list[CaseFacts], str]:
    """(reference, monitored, description) for `--reference` None (earliest half) or `A-B` (1-based, inclusive)."""
    if reference is None:
        half = len(cases) // 2
        return cases[:half], cases[half:], f"earliest half: cases 1-{half}"
    m = _RANGE.match(reference.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)) <= len(cases):
        raise UsageError(
            f"cannot use reference {reference!r} with {len(cases)} collected cases",
            hint="Pass a window as FIRST-LAST (1-based, e.g. 1-100) or a reference monitor.db.",
        )
    start, stop = int(m.group(1)) - 1, int(m.group(2))
    return cases[start:stop], cases[stop:], f"cases {start + 1}-{stop}"


def short_key(facts: CaseFacts) -> str:
    """The first 16 hex digits of the case's keyed digest: enough to find it, nothing to identify a patient."""
    return facts.case_key.split(":")[-1][:16]


def _numeric_alarm(d: NumericDrift, recent: list[CaseFacts]) -> Alarm:
    """The cases behind a numeric drift are the recent ones beyond the reference median, on the side it moved to."""
    up = d.recent_median >= d.reference_median
    behind = [
        short_key(c)
        for c in recent
        if d.feature in c.numbers
        and (c.numbers[d.feature] > d.reference_median) == up
        and c.numbers[d.feature] != d.reference_median
    ]
    message = (
        f"{d.feature} moved: median {d.reference_median:.4g} -> {d.recent_median:.4g} "
        f"(KS {d.ks_statistic:.2f}, p={d.p_value:.1e}, Wasserstein {d.wasserstein_ratio:.2f} x IQR)"
    )
    return Alarm("drift", d.feature, message, d.to_json(), behind[:MAX_CASES_PER_ALARM])


def _categorical_alarm(d: CategoricalDrift, recent: list[CaseFacts]) -> Alarm:
    n_ref, n_rec = sum(d.reference_counts.values()), sum(d.recent_counts.values())
    grown = {k for k, v in d.recent_counts.items() if v / n_rec > d.reference_counts.get(k, 0) / n_ref}
    share = ", ".join(
        f"{k} {v / n_rec:.0%} (was {d.reference_counts.get(k, 0) / n_ref:.0%})"
        for k, v in sorted(d.recent_counts.items())
        if k in grown
    )
    behind = [short_key(c) for c in recent if c.categories.get(d.feature) in grown]
    message = f"{d.feature} mix changed: {share} (chi2 p={d.p_value:.1e}, Cramer's V {d.cramers_v:.2f})"
    return Alarm("drift", d.feature, message, d.to_json(), behind[:MAX_CASES_PER_ALARM])


def _cusum_alarm(c: Cusum, monitored: list[CaseFacts]) -> Alarm:
    assert c.alarm_index is not None
    since = monitored[: c.alarm_index + 1]
    rate = sum(c.code in f.flags for f in since[-50:]) / len(since[-50:])
    message = (
        f"QC flag {c.code} rate rose: {rate:.0%} of the last {len(since[-50:])} cases vs {c.reference_rate:.0%} "
        f"in the reference (CUSUM {c.statistic[c.alarm_index]:.1f} > {c.limit:g} at monitored case "
        f"{c.alarm_index + 1})"
    )
    behind = [short_key(f) for f in since if c.code in f.flags][-MAX_CASES_PER_ALARM:]
    return Alarm("qc_rate", c.code, message, c.to_json() | {"statistic": None}, behind)


def _volume_checks(
    reference: list[CaseFacts], recent: list[CaseFacts], ranges: dict[str, tuple[float, float]]
) -> tuple[list[VolumeCheck], list[Alarm]]:
    limit = thresholds()["volume"]["max_outside_share"]
    checks, alarms = [], []
    for organ, (lo, hi) in sorted(ranges.items()):
        feature = f"volume_ml:{organ}"
        ref = [c.numbers[feature] for c in reference if feature in c.numbers]
        rec = [c for c in recent if feature in c.numbers]
        if not rec:
            continue
        ref_out = sum(not lo <= v <= hi for v in ref) / max(len(ref), 1)
        outside = [c for c in rec if not lo <= c.numbers[feature] <= hi]
        share = len(outside) / len(rec)
        check = VolumeCheck(organ, (lo, hi), ref_out, share, share > limit and share > ref_out)
        checks.append(check)
        if check.alarm:
            message = (
                f"{organ} volume outside {lo:g}-{hi:g} ml in {share:.0%} of recent cases (reference {ref_out:.0%})"
            )
            alarms.append(
                Alarm(
                    "volume_range",
                    feature,
                    message,
                    check.to_json(),
                    [short_key(c) for c in outside][:MAX_CASES_PER_ALARM],
                )
            )
    return checks, alarms


def _values(cases: list[CaseFacts], feature: str) -> list[float]:
    return [c.numbers[feature] for c in cases if feature in c.numbers]


def analyse(
    reference: list[CaseFacts],
    monitored: list[CaseFacts],
    description: str,
    volume_ranges: dict[str, tuple[float, float]] | None = None,
) -> Report:
    """Compare the last cases of `monitored` (at most recent_max) with `reference`; CUSUMs run over all monitored."""
    w = thresholds()["windows"]
    recent = monitored[-w["recent_max"] :]
    report = Report(description, len(reference), len(monitored), len(recent))
    if len(reference) < w["min_reference"] or len(recent) < w["min_recent"]:
        report.skipped.append(
            f"too few cases: {len(reference)} reference (need {w['min_reference']}), "
            f"{len(recent)} recent (need {w['min_recent']})"
        )
        return report
    for feature in sorted({k for c in reference for k in c.numbers}):
        ref, rec = _values(reference, feature), _values(recent, feature)
        if len(ref) < w["min_reference"] or len(rec) < w["min_recent"]:
            report.skipped.append(f"{feature}: {len(ref)} reference and {len(rec)} recent values")
            continue
        d = numeric_drift(feature, ref, rec)
        report.numeric.append(d)
        if d.alarm:
            report.alarms.append(_numeric_alarm(d, recent))
    for feature in sorted({k for c in [*reference, *recent] for k in c.categories}):
        ref_c = [c.categories.get(feature, NOT_RECORDED) for c in reference]
        rec_c = [c.categories.get(feature, NOT_RECORDED) for c in recent]
        if set(ref_c) | set(rec_c) == {NOT_RECORDED}:
            report.skipped.append(f"{feature}: not recorded in any summary")
            continue
        d = categorical_drift(feature, ref_c, rec_c)
        report.categorical.append(d)
        if d.alarm:
            report.alarms.append(_categorical_alarm(d, recent))
    for code in sorted({f for c in [*reference, *monitored] for f in c.flags}):
        c = bernoulli_cusum(code, [code in f.flags for f in reference], [code in f.flags for f in monitored])
        report.cusums.append(c)
        if c.alarm:
            report.alarms.append(_cusum_alarm(c, monitored))
    report.volumes, volume_alarms = _volume_checks(reference, recent, volume_ranges or {})
    report.alarms += volume_alarms
    return report
