"""Compare a recent window of cases with a reference: drift per fact, CUSUM per QC flag, volumes against the range."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
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
STATUS_ALARM, STATUS_INSUFFICIENT, STATUS_OK = "alarm", "insufficient", "ok"
FAILED = "failed"
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
    insufficient: str | None = None
    models: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """`alarm` when any alarm fired, else `insufficient` when too few cases to compare, else `ok`."""
        if self.alarms:
            return STATUS_ALARM
        return STATUS_INSUFFICIENT if self.insufficient else STATUS_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "status": self.status,
            "insufficient": self.insufficient,
            "reference": self.reference,
            "cases": {"reference": self.n_reference, "monitored": self.n_monitored, "recent": self.n_recent},
            "models": self.models,
            "thresholds": thresholds(),
            "alarms": [a.to_json() for a in self.alarms],
            "numeric": [d.to_json() for d in self.numeric],
            "categorical": [d.to_json() for d in self.categorical],
            "cusum": [c.to_json() for c in self.cusums],
            "volumes": [v.to_json() for v in self.volumes],
            "skipped": self.skipped,
        }


def split_cases(cases: list[CaseFacts], reference: str | None) -> tuple[list[CaseFacts], list[CaseFacts], str]:
    """(reference, monitored, description) for `--reference` None or `A-B` (1-based, inclusive).

    The default reference is fixed: the first `windows.reference_cases` cases of the store. It never grows with the
    store, so a drift nobody acted on keeps alarming until someone moves the reference on purpose.
    """
    if reference is None:
        n = int(thresholds()["windows"]["reference_cases"])
        if len(cases) <= n:
            return cases, [], f"first {len(cases)} cases (all there are; the default reference is the first {n})"
        return cases[:n], cases[n:], f"first {n} cases (the fixed default; move it with --reference)"
    m = _RANGE.match(reference.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)) <= len(cases):
        raise UsageError(
            f"cannot use reference {reference!r} with {len(cases)} collected cases",
            hint="Pass a window as FIRST-LAST (1-based, e.g. 1-100) or a reference monitor.db.",
        )
    start, stop = int(m.group(1)) - 1, int(m.group(2))
    return cases[start:stop], cases[stop:], f"cases {start + 1}-{stop}"


def finite_cases(cases: list[CaseFacts]) -> tuple[list[CaseFacts], int]:
    """The cases without any non-finite number (a store written before build refused them), and how many were
    dropped: one infinite volume must not break every later report."""
    out, dropped = [], 0
    for c in cases:
        kept = {k: v for k, v in c.numbers.items() if isinstance(v, int | float) and math.isfinite(v)}
        dropped += len(c.numbers) - len(kept)
        out.append(c if len(kept) == len(c.numbers) else replace(c, numbers=kept))
    return out, dropped


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
        ref_out = sum(not lo <= v <= hi for v in ref) / len(ref) if ref else 0.0
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


def _model_change(reference: list[CaseFacts], monitored: list[CaseFacts]) -> Alarm | None:
    """An alarm when monitored cases ran a model (name and version) the reference never ran: the comparison then
    mixes models, and a changed model needs its own reference."""
    known = {c.model for c in reference}
    new = [c for c in monitored if c.model not in known]
    if not reference or not new:
        return None
    counts = Counter(c.model for c in new)
    message = (
        "model changed: "
        + ", ".join(f"{m} in {n} monitored case(s)" for m, n in sorted(counts.items()))
        + f"; the reference ran {', '.join(sorted(known))}. Compare each model with its own reference "
        "(--reference after the change)"
    )
    evidence = {"reference_models": sorted(known), "new_models": dict(counts)}
    return Alarm("model_change", "model", message, evidence, [short_key(c) for c in new][:MAX_CASES_PER_ALARM])


def _insufficient(reference: list[CaseFacts], recent: list[CaseFacts]) -> str | None:
    """Why the windows are too small to compare, or None."""
    w = thresholds()["windows"]
    if len(reference) >= w["min_reference"] and len(recent) >= w["min_recent"]:
        return None
    return (
        f"not enough cases to monitor: {len(reference)} reference (need {w['min_reference']}), "
        f"{len(recent)} recent (need {w['min_recent']})"
    )


def analyse(
    reference: list[CaseFacts],
    monitored: list[CaseFacts],
    description: str,
    volume_ranges: dict[str, tuple[float, float]] | None = None,
) -> Report:
    """Compare the last cases of `monitored` (at most recent_max) with `reference`; CUSUMs run over all monitored.

    With too few cases the report is `insufficient` (never a quiet `ok`); the volume range check, which needs no
    statistics, still runs: over the recent cases, or over the last cases of all when none is monitored yet.
    """
    w = thresholds()["windows"]
    reference, dropped_ref = finite_cases(reference)
    monitored, dropped_mon = finite_cases(monitored)
    recent = monitored[-w["recent_max"] :]
    report = Report(description, len(reference), len(monitored), len(recent))
    report.models = {
        "reference": dict(Counter(c.model for c in reference)),
        "monitored": dict(Counter(c.model for c in monitored)),
    }
    if dropped_ref + dropped_mon:
        report.skipped.append(f"{dropped_ref + dropped_mon} non-finite value(s) in the cases ignored")
    model_alarm = _model_change(reference, monitored)
    if model_alarm is not None:
        report.alarms.append(model_alarm)
    report.insufficient = _insufficient(reference, recent)
    if report.insufficient:
        ranged_ref, ranged = (reference, recent) if recent else ([], [*reference, *monitored][-w["recent_max"] :])
        report.volumes, volume_alarms = _volume_checks(ranged_ref, ranged, volume_ranges or {})
        report.alarms += volume_alarms
        return report
    ref_read, rec_read = _read_input(reference), _read_input(recent)  # failures: counted by their CUSUM only
    for feature in sorted({k for c in rec_read for k in c.numbers} - {k for c in ref_read for k in c.numbers}):
        n = len(_values(rec_read, feature))
        report.skipped.append(f"{feature}: only in the recent window ({n} cases), none in the reference")
    for feature in sorted({k for c in ref_read for k in c.numbers}):
        ref, rec = _values(ref_read, feature), _values(rec_read, feature)
        if len(ref) < w["min_reference"] or len(rec) < w["min_recent"]:
            report.skipped.append(f"{feature}: {len(ref)} reference and {len(rec)} recent values")
            continue
        d = numeric_drift(feature, ref, rec)
        report.numeric.append(d)
        if d.alarm:
            report.alarms.append(_numeric_alarm(d, rec_read))
    for feature in sorted({k for c in [*ref_read, *rec_read] for k in c.categories}):
        ref_c = [c.categories.get(feature, NOT_RECORDED) for c in ref_read]
        rec_c = [c.categories.get(feature, NOT_RECORDED) for c in rec_read]
        if set(ref_c) | set(rec_c) == {NOT_RECORDED}:
            report.skipped.append(f"{feature}: not recorded in any summary")
            continue
        d = categorical_drift(feature, ref_c, rec_c)
        report.categorical.append(d)
        if d.alarm:
            report.alarms.append(_categorical_alarm(d, rec_read))
    for code in sorted({f for c in [*reference, *monitored] for f in c.flags}):
        c = bernoulli_cusum(code, [code in f.flags for f in reference], [code in f.flags for f in monitored])
        report.cusums.append(c)
        if c.alarm:
            report.alarms.append(_cusum_alarm(c, monitored))
    report.volumes, volume_alarms = _volume_checks(ref_read, rec_read, volume_ranges or {})
    report.alarms += volume_alarms
    return report


def _read_input(cases: list[CaseFacts]) -> list[CaseFacts]:
    """The cases whose run read its input: a failed run records no acquisition, grid or volume, and the backend it
    was asked for, so its facts would show as drift in every category (its rate has its own CUSUM)."""
    return [c for c in cases if c.status != FAILED]
