"""`medseg monitor` on streams built from REAL infer outputs: shifts found in time, no false alarms, no PHI, dashboard.

The four real CTs in shared/data/ct are segmented once per session (about a minute); the streams vary them as a
site would (tests/monitor_streams.py). Delay bounds are the worst delays seen over 50 seeded streams with
bench/bench_monitor.py; these tests run the first seeds of the same generator.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from monitor_streams import (
    SHIFTS,
    read_summaries,
    run_real_inference,
    stream,
    thick_slices,
    to_facts,
    write_stream,
)

from medseg.monitor.facts import facts_from_summary
from medseg.monitor.report import analyse
from medseg.monitor.store import SCHEMA_VERSION

pytestmark = pytest.mark.slow
MEDSEG = [sys.executable, "-m", "medseg"]
REFERENCE, CLEAN = 60, 20
RANGES = {"liver": (600.0, 3500.0)}
# shift -> (the fact whose alarm must fire, most shifted cases before it fires)
BOUNDS = {
    "other_manufacturer": ("manufacturer", 10),
    "thick_slices": ("slice_thickness_mm", 40),
    "non_contrast": ("contrast", 45),
    "more_truncation": ("organ_truncated", 60),
    "under_segmentation": ("volume_ml:liver", 120),
}
SEEDS = range(5)


@pytest.fixture(scope="session")
def real_outputs(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Output folders of `medseg infer` on the four real CTs, made once per test session."""
    return run_real_inference(shared, tmp_path_factory.mktemp("monitor-real"))


@pytest.fixture(scope="session")
def real(real_outputs: dict[str, Path]) -> dict[str, dict]:
    return read_summaries(real_outputs)


def medseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDSEG, *args], capture_output=True, text=True, timeout=300)


def test_facts_of_the_real_summaries(real: dict[str, dict]) -> None:
    for name, summary in real.items():
        raw = json.dumps(summary).encode()
        facts = facts_from_summary(summary, raw, name, b"k" * 32)
        assert facts.numbers["slice_spacing_mm"] == summary["input"]["spacing_mm"][2], name
        assert facts.numbers["volume_ml:liver"] == summary["organs"][0]["volume_ml"]
        assert facts.numbers["mean_hu:liver"] == summary["organs"][0]["mean_hu"]
        assert facts.flags == {f["code"] for f in summary["qc"]["flags"]}
        assert facts.categories["format"] == summary["input"]["format"]
        recorded = (summary["input"].get("acquisition") or {}).get("manufacturer") or "(not recorded)"
        assert facts.categories["manufacturer"] == recorded
    assert real["chaos"]["input"]["format"] == "dicom" and real["radcttace_0697"]["input"]["spacing_mm"][2] == 5.0


def _first_alarm(cases: list, start: int, step: int = 1) -> tuple[int | None, set[str]]:
    reference, monitored = cases[:REFERENCE], cases[REFERENCE:]
    for t in range(start, len(monitored) + 1, step):
        alarms = {a.feature for a in analyse(reference, monitored[:t], "test", RANGES).alarms}
        if alarms:
            return t, alarms
    return None, set()


@pytest.mark.parametrize("name", list(BOUNDS))
def test_each_shift_raises_its_alarm_within_its_bound(real: dict[str, dict], name: str) -> None:
    feature, bound = BOUNDS[name]
    delays = []
    for seed in SEEDS:
        cases = to_facts(stream(real, seed, REFERENCE + CLEAN + bound, SHIFTS[name], REFERENCE + CLEAN))
        reference, monitored = cases[:REFERENCE], cases[REFERENCE:]
        for t in range(CLEAN, len(monitored) + 1):
            alarms = {a.feature for a in analyse(reference, monitored[:t], "test", RANGES).alarms}
            assert t > CLEAN or not alarms, f"{name} seed {seed}: alarm {alarms} before the shift"
            if feature in alarms:
                delays.append(t - CLEAN)
                break
        else:
            pytest.fail(f"{name} seed {seed}: no {feature} alarm within {bound} shifted cases")
    print(f"{name}: delays {delays}")
    assert max(delays) <= bound


def test_unshifted_streams_raise_no_alarm(real: dict[str, dict]) -> None:
    n = REFERENCE + CLEAN + 100
    fired = []
    for seed in range(10):
        at, alarms = _first_alarm(to_facts(stream(real, 10_000 + seed, n)), 10, step=5)
        if at is not None:
            fired.append((seed, at, alarms))
    print(f"false alarms: {len(fired)}/10 streams ({fired})")
    assert not fired


def _write_streams(real: dict[str, dict], real_outputs: dict[str, Path], root: Path) -> tuple[Path, Path]:
    cases = stream(real, 7, REFERENCE + CLEAN + 40)
    for s in cases[REFERENCE + CLEAN :]:
        thick_slices(s, np.random.default_rng(0))
    preview = real_outputs["chaos"] / "preview.png"
    first, second = root / "site-week1", root / "site-week2"
    write_stream(cases[: REFERENCE + CLEAN], first, preview)
    write_stream(cases[REFERENCE + CLEAN :], second, preview, start=REFERENCE + CLEAN)
    return first, second


@pytest.fixture(scope="module")
def alarm_run(real: dict[str, dict], real_outputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store built in two steps from a stream that switches to 5 mm slices, and its report."""
    root = tmp_path_factory.mktemp("monitor-cli")
    first, second = _write_streams(real, real_outputs, root)
    db, out = root / "monitor.db", root / "report"
    runs = [
        medseg("monitor", "build", "--from", str(first), "--out", str(db)),
        medseg("monitor", "build", "--from", str(first), "--out", str(db)),
        medseg("monitor", "build", "--from", str(first), "--from", str(second), "--out", str(db)),
    ]
    report = medseg(
        "monitor", "report", "--db", str(db), "--reference", "1-60", "--cases", str(second), "--out", str(out)
    )
    return {"root": root, "db": db, "out": out, "builds": runs, "report": report, "streams": (first, second)}


def test_build_is_idempotent_and_report_exits_1_on_alarm(alarm_run: dict) -> None:
    builds = alarm_run["builds"]
    assert [b.returncode for b in builds] == [0, 0, 0], [b.stderr for b in builds]
    assert "80 new case(s) of 80 found; 80 in the store" in builds[0].stdout
    assert "0 new case(s) of 80 found; 80 in the store" in builds[1].stdout
    assert "40 new case(s) of 120 found; 120 in the store" in builds[2].stdout
    report = alarm_run["report"]
    assert report.returncode == 1, report.stderr
    data = json.loads((alarm_run["out"] / "monitor.json").read_text())
    fired = {a["feature"] for a in data["alarms"]}
    assert {"slice_thickness_mm", "slice_spacing_mm"} <= fired, fired
    assert fired <= {"slice_thickness_mm", "slice_spacing_mm", "z_extent_mm"}, fired
    assert "ALARM drift: slice_thickness_mm moved" in report.stderr
    html_text = (alarm_run["out"] / "monitor.html").read_text()
    for alarm in data["alarms"]:
        assert html.escape(alarm["message"]) in html_text
    assert data["cases"] == {"reference": 60, "monitored": 60, "recent": 50}
    links = re.findall(r'<a href="([^"]+)">([0-9a-f]{16})</a>', html_text)
    alarm_cases = {k for a in data["alarms"] for k in a["cases"]}
    assert links and {key for _, key in links} <= alarm_cases
    for href, _ in links:
        assert (alarm_run["out"] / href).resolve().is_file() and href.endswith("preview.png")


def test_an_unshifted_stream_reports_no_alarm_exit_0(real: dict[str, dict], tmp_path: Path) -> None:
    write_stream(stream(real, 10_003, 120), tmp_path / "site")
    db = tmp_path / "m.db"
    assert medseg("monitor", "build", "--from", str(tmp_path / "site"), "--out", str(db)).returncode == 0
    done = medseg("monitor", "report", "--db", str(db), "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "r" / "monitor.json").read_text())
    assert data["alarms"] == [] and data["cases"]["reference"] == 60 and len(data["numeric"]) >= 6
    trail = medseg("audit", "show", "--json")
    events = [e for e in json.loads(trail.stdout) if e.get("command", "").startswith("monitor")]
    assert [(e["command"], e["kind"]) for e in events] == [("monitor build", "end"), ("monitor report", "end")]
    assert events[-1]["outcome_detail"] == "alarms:0" and len(events[-1]["outputs"]) == 2
    same = medseg("monitor", "report", "--db", str(db), "--reference", str(db), "--out", str(tmp_path / "self"))
    self_report = json.loads((tmp_path / "self" / "monitor.json").read_text())
    assert same.returncode == 0 and self_report["reference"] == "store m.db" and self_report["alarms"] == []
    assert self_report["cases"] == {"reference": 120, "monitored": 120, "recent": 50}
    for reference, message in (("sets/liver.lock.json", "not supported yet"), ("50-500", "cannot use reference")):
        refused = medseg("monitor", "report", "--db", str(db), "--reference", reference, "--out", str(tmp_path / "x"))
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr


def test_confidence_and_low_confidence_are_watched_when_the_model_gives_them(real: dict[str, dict]) -> None:
    cases = stream(real, 11, 120)
    rng = np.random.default_rng(11)
    for i, s in enumerate(cases):
        low = rng.random() < (0.05 if i < 80 else 0.5)
        s["organs"][0] |= {"confidence": float(rng.normal(0.6 if low else 0.9, 0.03)), "low_confidence": low}
    facts = to_facts(cases)
    assert all("confidence:liver" in f.numbers for f in facts)
    assert [("low_confidence" in f.flags) for f in facts] == [s["organs"][0]["low_confidence"] for s in cases]
    report = analyse(facts[:60], facts[60:], "test", RANGES)
    fired = {a.feature: a for a in report.alarms}
    assert "low_confidence" in fired and fired["low_confidence"].kind == "qc_rate"
    assert "confidence:liver" in fired
    clean = analyse(facts[:60], facts[60:80], "test", RANGES)
    assert clean.alarms == []


def test_the_store_holds_no_identity(alarm_run: dict, real: dict[str, dict]) -> None:
    db: Path = alarm_run["db"]
    forbidden = [
        str(alarm_run["root"]),
        "site-week",
        "synthetic-",
        real["chaos"]["input"]["series_instance_uid"],
        real["chaos"]["input"]["path"],
        "chaos",
        "radcttace",
    ]
    forbidden += [s["input"]["sha256"] for s in real.values()]
    conn = sqlite3.connect(db)
    texts = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
        for row in conn.execute(f"SELECT * FROM {table}"):
            if table == "meta" and row[0] == "newest_summary_ns":  # the store's one time: no case is linked to it
                assert row[1].isdigit()
                continue
            texts += [v for v in row if isinstance(v, str)]
    conn.close()
    assert texts
    for text in (t for t in texts if t != SCHEMA_VERSION):
        assert "/" not in text and not any(f in text for f in forbidden), text
        assert not re.search(r"\d{8}", text) or re.fullmatch(r"(hmac-sha256:)?[0-9a-f]{64}", text), text
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert not any(f.encode() in raw for f in forbidden)


def test_build_from_a_pacs_database(real: dict[str, dict], tmp_path: Path) -> None:
    pacs = tmp_path / "pacs.db"
    conn = sqlite3.connect(pacs)
    conn.execute("CREATE TABLE monitor_results (job_order INTEGER PRIMARY KEY, summary_json TEXT NOT NULL)")
    rows = [(i, json.dumps(s)) for i, s in enumerate(real.values())] + [(99, "{not json")]
    conn.executemany("INSERT INTO monitor_results VALUES (?, ?)", rows)
    conn.commit()
    conn.close()
    db = tmp_path / "m.db"
    done = medseg("monitor", "build", "--from-pacs", str(pacs), "--out", str(db))
    assert done.returncode == 0, done.stderr
    assert "4 new case(s) of 5 found" in done.stdout and "job 99" in done.stderr
    again = medseg("monitor", "build", "--from-pacs", str(pacs), "--out", str(db))
    assert "0 new case(s) of 5 found; 4 in the store" in again.stdout
    bad = tmp_path / "other.db"
    sqlite3.connect(bad).execute("CREATE TABLE jobs (id INTEGER)").connection.commit()
    refused = medseg("monitor", "build", "--from-pacs", str(bad), "--out", str(db))
    assert refused.returncode == 3 and "monitor_results" in refused.stderr and "Traceback" not in refused.stderr


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    missing = medseg("monitor", "build", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "m.db"))
    assert missing.returncode == 3 and "output folder not found" in missing.stderr
    nothing = medseg("monitor", "build", "--out", str(tmp_path / "m.db"))
    assert nothing.returncode == 2 and "nothing to collect" in nothing.stderr
    no_db = medseg("monitor", "report", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "r"))
    assert no_db.returncode == 3 and "monitor store not found" in no_db.stderr
    for res in (missing, nothing, no_db):
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.documentElement.setAttribute('data-probe', JSON.stringify({
    images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    errors: window.__errors}));
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium not found: run scripts/setup.sh (installs Debian's chromium)")
    return found


def _chromium_run(html: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        *args,
        html.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_dashboard_loads_in_chromium_with_every_image(alarm_run: dict, tmp_path: Path) -> None:
    from PIL import Image

    html_path: Path = alarm_run["out"] / "monitor.html"
    page = html_path.read_text()
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(sources) == page.count("<img") >= 5
    assert not re.search(r"(src|href)=\"(https?:|//)", page) and "<script" not in page
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert image.width > 300 and image.height > 150

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    done = _chromium_run(probe, tmp_path, "--virtual-time-budget=10000", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"data-probe=\"([^\"]+)\"", done.stdout)
    assert found, done.stdout[:500]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result == {"images": len(sources), "decoded": len(sources), "errors": []}

    shot = tmp_path / "monitor-dashboard.png"
    done = _chromium_run(html_path, tmp_path, "--window-size=1280,3600", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (3600, 1280) and pixels.std() > 20  # not a blank page
    print(f"dashboard screenshot: {shot}")


def test_help_still_fast_and_light() -> None:
    names = ("matplotlib", "scipy", "medseg.monitor")
    code = f"import sys, medseg.cli.main\nprint(','.join(m for m in {names!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
    res = medseg("monitor", "--help")
    assert res.returncode == 0 and "build" in res.stdout and "report" in res.stdout


def test_a_real_failed_cases_summary_is_counted_as_status_failed(shared: Path, tmp_path: Path) -> None:
    """`medseg infer` writes a summary.json for a failed case (a truncated NIfTI here); `monitor build` reads it and
    counts status_failed (before, failed cases wrote nothing and monitoring could not see them)."""
    good = (shared / "ct/totalseg_example_ct_sm/image.nii.gz").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    done = medseg("infer", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert done.returncode == 3, done.stderr
    raw = (tmp_path / "out/cut/summary.json").read_bytes()
    facts = facts_from_summary(json.loads(raw), raw, "cut", b"k" * 32)
    assert "status_failed" in facts.flags
    built = medseg("monitor", "build", "--from", str(tmp_path / "out"), "--out", str(tmp_path / "m.db"))
    assert built.returncode == 0, built.stderr
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT count(*) FROM flags WHERE code = 'status_failed'").fetchone() == (1,)
