"""Monitoring statistics, facts and store on generated inputs (fast); real streams are in test_monitor_real.py."""

from __future__ import annotations

import math
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.errors import InvalidInputError, UsageError
from medseg.monitor.facts import CaseFacts, _category, lookup
from medseg.monitor.report import analyse, split_cases
from medseg.monitor.stats import (
    bernoulli_cusum,
    categorical_drift,
    cusum_limits,
    numeric_drift,
    thresholds,
    wilson_upper,
)
from medseg.monitor.store import MonitorStore

PLAN = Path(__file__).resolve().parents[1] / "docs" / "risk" / "post-market-monitoring.md"


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_every_threshold_is_in_the_monitoring_plan_with_its_value() -> None:
    plan = PLAN.read_text()
    for name in _leaves(thresholds()):
        section, key = name.rsplit(".", 1)
        value = lookup(thresholds(), name)
        assert re.search(rf"`{section}\.{key}`[^\n]*\b{re.escape(str(value))}\b", plan), f"{name}={value} not in plan"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=20, max_size=80))
def test_a_sample_never_drifts_from_itself(values: list[float]) -> None:
    d = numeric_drift("x", values, values)
    assert not d.alarm and d.ks_statistic == 0 and d.wasserstein == 0


def test_a_large_shift_alarms_and_a_tiny_one_does_not() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 60).tolist()
    assert numeric_drift("x", ref, rng.normal(2, 1, 40).tolist()).alarm
    big_ref, big_rec = rng.normal(0, 1, 20000).tolist(), rng.normal(0.05, 1, 20000).tolist()
    small = numeric_drift("x", big_ref, big_rec)
    assert small.p_value < 1e-3 and not small.alarm  # significant on many cases, but too small to matter


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["GE", "Philips", "SIEMENS", "Canon"]), min_size=20, max_size=60), st.randoms())
def test_category_counts_in_any_order_do_not_drift(values: list[str], rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(values)
    rnd.shuffle(shuffled)
    d = categorical_drift("manufacturer", values, shuffled)
    assert not d.alarm and d.p_value == pytest.approx(1.0)


def test_a_new_manufacturer_alarms() -> None:
    ref = ["GE"] * 30 + ["Philips"] * 30
    d = categorical_drift("manufacturer", ref, ["SIEMENS"] * 20)
    assert d.alarm and d.recent_counts == {"SIEMENS": 20}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=80), st.lists(st.booleans(), min_size=0, max_size=200))
def test_cusum_is_never_negative_and_alarms_at_its_first_crossing(ref: list[bool], mon: list[bool]) -> None:
    c = bernoulli_cusum("flag", ref, mon)
    assert all(s >= 0 for s in c.statistic) and len(c.statistic) == len(mon)
    crossings = [i for i, s in enumerate(c.statistic) if s > c.limit]
    assert c.alarm_index == (crossings[0] if crossings else None)
    assert 0 < c.p0 < c.p1 < 1


def test_cusum_quiet_on_no_flags_and_fast_on_all_flags() -> None:
    ref = [False] * 50 + [True] * 10
    assert bernoulli_cusum("f", ref, [False] * 500).alarm_index is None
    c = bernoulli_cusum("f", ref, [True] * 50)
    assert c.alarm_index == math.floor(c.limit / math.log(c.p1 / c.p0))


@given(st.integers(0, 200), st.integers(1, 200))
def test_wilson_upper_bound_lies_above_the_rate(hits: int, n: int) -> None:
    hits = min(hits, n)
    assert hits / n <= wilson_upper(hits, n, 1.0) <= 1.0


def test_cusum_rates_respect_floor_and_cap() -> None:
    t = thresholds()["cusum"]
    assert cusum_limits(0.0)[0] == t["rate_floor"]
    assert cusum_limits(0.99)[1] == t["rate_cap"]


@given(st.text(min_size=1, max_size=30))
def test_paths_uids_and_dates_never_become_category_values(text: str) -> None:
    for value in (f"/home/{text}", f"C:\\{text}", "1.2.840.113619.2.55.3", f"{text}20240131"):
        assert _category(value) == "(withheld)"


def test_lookup_follows_dotted_paths_and_indexes() -> None:
    data = {"input": {"spacing_mm": [0.7, 0.7, 2.0], "acquisition": {"manufacturer": "GE"}}}
    assert lookup(data, "input.spacing_mm[2]") == 2.0
    assert lookup(data, "input.acquisition.manufacturer") == "GE"
    assert lookup(data, "input.spacing_mm[5]") is None and lookup(data, "nothing.here") is None


def _facts(i: int) -> CaseFacts:
    flags = frozenset({"organ_truncated"} if i % 3 else set())
    key, digest, ref = f"hmac-sha256:{i:064x}", f"{i:064x}", f"hmac-sha256:{i + 1:064x}"
    return CaseFacts(
        key, digest, ref, "liver 1.0.0", "ok", {"volume_ml:liver": 1000.0 + i}, {"manufacturer": "GE"}, flags
    )


def test_store_adds_each_case_once_and_keeps_the_order(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with MonitorStore.open(db, create=True) as store:
        assert store.add([_facts(i) for i in range(5)]) == 5
        assert store.add([_facts(i) for i in range(7)]) == 2
        cases = store.cases()
    assert [c.numbers["volume_ml:liver"] for c in cases] == [1000.0 + i for i in range(7)]
    assert cases[1].flags == frozenset({"organ_truncated"}) and cases[0].flags == frozenset()


def test_a_failure_mid_build_adds_nothing(tmp_path: Path) -> None:
    def broken():  # type: ignore[no-untyped-def]
        yield _facts(1)
        yield _facts(2)
        raise OSError("disk went away")

    db = tmp_path / "m.db"
    with MonitorStore.open(db, create=True) as store:
        with pytest.raises(OSError):
            store.add(broken())
        assert store.cases() == []
        assert store.add([_facts(1)]) == 1


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(InvalidInputError, match="not a monitor store"), MonitorStore.open(junk):
        pass
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE meta (name TEXT, value TEXT)").connection.commit()
    with pytest.raises(InvalidInputError, match="not a monitor store"), MonitorStore.open(other):
        pass
    with pytest.raises(InvalidInputError, match="not found"), MonitorStore.open(tmp_path / "missing.db"):
        pass


def test_windows_and_too_few_cases() -> None:
    cases = [_facts(i) for i in range(70)]
    ref, mon, text = split_cases(cases, None)
    assert ref == cases[:60] and mon == cases[60:] and "first 60 cases" in text
    ref, mon, _ = split_cases(cases, "3-22")
    assert ref[0] is cases[2] and len(ref) == 20 and mon == cases[22:]
    with pytest.raises(UsageError, match=r"cannot use reference .10-99. with 70"):
        split_cases(cases, "10-99")
    report = analyse(cases[:5], cases[5:], "tiny")
    assert report.alarms == [] and report.status == "insufficient"
    assert report.insufficient is not None and report.insufficient.startswith("not enough cases to monitor")
