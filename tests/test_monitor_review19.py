"""Post-market surveillance review (nineteenth session): what a surveillance officer relying on `medseg monitor` and
the audit trail hit. Each test failed on the code before its fix."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import run_in_process
from monitor_streams import summary_case, to_facts, write_stream

from medseg.audit.config import load_config
from medseg.audit.store import AuditStore
from medseg.monitor.report import analyse

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CT = DATA / "ct" / "chaos_ct_sample" / "image.nii.gz"


def _site(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [summary_case(i, rng) for i in range(n)]


def _ends() -> list[dict[str, Any]]:
    """The end events of the test's audit store (conftest gives each test its own)."""
    with AuditStore.open(load_config(), create=False) as store:
        return [r.body for r in store.records() if r.body["kind"] == "end"]


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


def _failed_like_infer(case: dict[str, Any]) -> dict[str, Any]:
    """The summary `medseg infer` writes for a run that failed reading its input: no input block, no organs, the
    backend asked for, the error."""
    keep = ("schema", "case", "organ", "model", "settings", "notes", "qc", "outputs")
    failed = {k: case[k] for k in keep if k in case} | {"status": "failed", "timings_s": {"total": 0.002}}
    failed["software"] = case["software"] | {"backend": "auto"}
    failed["qc"] = {"passed": False, "strict": False, "refused": [], "forced": [], "flags": []}
    return failed | {"outputs": {}, "failure": "x.nii.gz: NIfTI file is truncated or corrupt.", "exit_code": 3}


def test_folder_names_given_to_monitor_are_keyed_in_the_audit_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_stream(_site(70), tmp_path / "DOE_JOHN_MRN4711")
    code, _, err = run_in_process(["monitor", "build", "--from", "DOE_JOHN_MRN4711", "--out", "m.db"], capsys)
    assert code == 0, err
    shutil.copyfile("m.db", "SMITH_JANE.db")
    code, _, err = run_in_process(["monitor", "report", "--db", "m.db", "--out", "r", "--reference", "SMITH_JANE.db",
                                   "--cases", "DOE_JOHN_MRN4711"], capsys)  # fmt: skip
    assert code in (0, 1), err
    text = json.dumps(_ends())
    assert "DOE_JOHN" not in text and "SMITH_JANE" not in text
    assert len(_ends()) == 2


def test_build_refuses_a_foreign_database_and_writes_nothing_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_stream(_site(3), tmp_path / "out")
    pacs = tmp_path / "pacs.db"
    with sqlite3.connect(pacs) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT)")
        conn.execute("INSERT INTO jobs VALUES (1, 'done')")
    before = pacs.read_bytes()
    audit_db = load_config().db_path
    run_in_process(["series", str(tmp_path)], capsys)  # any command: the audit store exists
    for target in (pacs, audit_db):
        tables = _tables(target)
        code, _, err = run_in_process(["monitor", "build", "--from", str(tmp_path / "out"), "--out", str(target)],
                                      capsys)  # fmt: skip
        if target == audit_db:  # any output in the audit store's folder is refused first (re-probe 20 #1)
            assert code == 2 and "audit store's folder" in err and "Traceback" not in err, err
        else:
            assert code == 3 and "not a monitor store" in err and "Traceback" not in err, err
        assert _tables(target) == tables, target
    assert pacs.read_bytes() == before  # the audit store holds the build's own (refused) record, nothing else
    with sqlite3.connect(audit_db) as conn:
        assert not [k for (k,) in conn.execute("SELECT key FROM meta") if "case_key" in k]
    with sqlite3.connect(pacs) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    code, _, err = run_in_process(["audit", "verify"], capsys)
    assert code == 0, err


def test_the_audit_record_carries_the_exit_code_of_monitor_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_stream(_site(20), tmp_path / "out")
    assert run_in_process(["monitor", "build", "--from", str(tmp_path / "out"), "--out", str(tmp_path / "m.db")],
                          capsys)[0] == 0  # fmt: skip
    code, _, err = run_in_process(["monitor", "report", "--db", str(tmp_path / "m.db"), "--out", str(tmp_path / "r")],
                                  capsys)  # fmt: skip
    assert code == 6, err
    last = _ends()[-1]
    assert (last["command"], last["exit_code"]) == ("monitor report", 6)


def test_retrying_a_failing_input_is_one_failed_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "scan.nii.gz"
    broken.write_bytes(CT.read_bytes()[:5000])
    with pytest.raises(EOFError):
        gzip.decompress(broken.read_bytes())
    typed = [str(broken), str(broken.resolve()), os.path.relpath(broken)]  # the path as typed is in the error text
    for attempt in range(3):
        code, _, err = run_in_process(["infer", typed[attempt], "--organ", "liver", "--out", str(tmp_path / "out")],
                                      capsys)  # fmt: skip
        assert code == 3, err
        summary = json.loads((tmp_path / "out/scan/summary.json").read_text())
        assert summary["status"] == "failed"
        summary["timings_s"] = {"total": 0.001 * (attempt + 2)}  # as retries differ
        (tmp_path / "out/scan/summary.json").write_text(json.dumps(summary))
        code, out, err = run_in_process(
            ["monitor", "build", "--from", str(tmp_path / "out"), "--out", str(tmp_path / "m.db")], capsys
        )
        assert code == 0, err
        assert "; 1 in the store" in out, (attempt, out)


def test_cases_in_symlinked_folders_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_stream(_site(2), tmp_path / "elsewhere")
    write_stream(_site(4)[2:], tmp_path / "res")
    (tmp_path / "res" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "res" / "loop").symlink_to(tmp_path / "res", target_is_directory=True)
    code, out, err = run_in_process(["monitor", "build", "--from", str(tmp_path / "res"), "--out",
                                     str(tmp_path / "m.db")], capsys)  # fmt: skip
    assert code == 0, err
    assert "4 new case(s) of 4 found" in out


def test_a_build_adding_older_summaries_after_newer_ones_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _site(10)
    write_stream(cases[:5], tmp_path / "old")
    write_stream(cases[5:], tmp_path / "new", start=5)
    db = str(tmp_path / "m.db")
    code, _, err = run_in_process(["monitor", "build", "--from", str(tmp_path / "new"), "--out", db], capsys)
    assert code == 0 and "written before" not in err, err
    code, _, err = run_in_process(["monitor", "build", "--from", str(tmp_path / "old"), "--out", db], capsys)
    assert code == 0, err
    assert "5 new case(s) were written before cases an earlier build stored" in err
    code, _, err = run_in_process(["monitor", "build", "--from", str(tmp_path / "old"), "--out", db], capsys)
    assert code == 0 and "written before" not in err, err  # nothing new: nothing to warn about


def test_failed_cases_raise_the_failure_alarm_and_no_deployment_drift() -> None:
    site = _site(120, seed=4)
    failing = [_failed_like_infer(c) if i >= 95 and i % 2 else c for i, c in enumerate(site)]
    facts = to_facts(failing)
    report = analyse(facts[:60], facts[60:], "test")
    features = {a.feature for a in report.alarms}
    assert "status_failed" in features
    assert not features & {"backend", "format"}, [a.message for a in report.alarms]
    assert all(c.feature != "backend" or not c.alarm for c in report.categorical)


def test_build_records_every_summary_it_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_stream(_site(3), tmp_path / "out")
    code, _, err = run_in_process(["monitor", "build", "--from", str(tmp_path / "out"), "--out",
                                   str(tmp_path / "m.db")], capsys)  # fmt: skip
    assert code == 0, err
    inputs = _ends()[-1]["inputs"]
    assert len(inputs) == 3 and all(len(i["sha256"]) == 64 for i in inputs), inputs


def test_a_refused_pacs_build_creates_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pacs = tmp_path / "pacs.db"
    with sqlite3.connect(pacs) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    code, _, err = run_in_process(["monitor", "build", "--from-pacs", str(pacs), "--out", str(tmp_path / "new.db")],
                                  capsys)  # fmt: skip
    assert code == 3 and "monitor_results" in err, err
    assert not (tmp_path / "new.db").exists()
