"""`medseg audit ...`: exit codes, --json output, filters, signed export and its verification."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from cli_run import run_in_process as run

from medseg.audit.config import load_config
from medseg.cli.audited import audited

PHANTOM = "dicom/mr_series_penn_prisma_phantom"




@pytest.fixture
def history(shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Two real conversions (one succeeds, one fails on a 2D image) recorded in the test's audit store."""
    assert run(["convert", str(shared / PHANTOM), str(tmp_path / "ct.nii.gz")], capsys)[0] == 0
    xray = sorted((shared / "deid" / "burned_in_text_jsl").glob("*XR_CHEST*.dcm"))[0]
    assert run(["convert", str(xray), str(tmp_path / "xr.nii.gz")], capsys)[0] == 3
    return tmp_path


def test_verify_intact_and_tampered(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["audit", "verify", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["records"] == 4
    code, out, _ = run(["audit", "verify"], capsys)
    assert code == 0 and out.startswith("audit trail intact: 4 records")

    with sqlite3.connect(load_config().db_path) as conn:
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute('UPDATE events SET body = replace(body, \'"outcome":"failure"\', \'"outcome":"success"\')')
    code, out, _ = run(["audit", "verify", "--json"], capsys)
    assert code == 1
    assert json.loads(out)["first_problem"]["seq"] == 4 and json.loads(out)["first_problem"]["kind"] == "edited"
    code, out, _ = run(["audit", "verify"], capsys)
    assert code == 1 and "first bad: record 4 (edited)" in out


def test_verify_without_a_store_is_a_processing_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["audit", "verify", "--audit-dir", str(tmp_path / "none")], capsys)
    assert code == 4 and "no audit store" in err


def test_show_filters_and_json(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["audit", "show", "--json"], capsys)
    events = json.loads(out)
    assert code == 0 and [(e["command"], e["outcome"], e["exit_code"]) for e in events] == [
        ("convert", "success", 0),
        ("convert", "failure", 3),
    ]
    assert all(len(e["hash"]) == 64 and e["inputs"][0]["sha256"] for e in events)
    assert len(json.loads(run(["audit", "show", "--json", "--all-events"], capsys)[1])) == 4
    assert [e["seq"] for e in json.loads(run(["audit", "show", "--json", "--outcome", "failure"], capsys)[1])] == [4]
    assert json.loads(run(["audit", "show", "--json", "--command", "infer"], capsys)[1]) == []
    assert len(json.loads(run(["audit", "show", "--json", "--user", "test-operator"], capsys)[1])) == 2
    assert json.loads(run(["audit", "show", "--json", "--user", "nobody-else"], capsys)[1]) == []
    assert len(json.loads(run(["audit", "show", "--json", "--since", "1h"], capsys)[1])) == 2
    assert json.loads(run(["audit", "show", "--json", "--since", "2999-01-01"], capsys)[1]) == []
    assert json.loads(run(["audit", "show", "--json", "--until", "2000-01-01T00:00:00Z"], capsys)[1]) == []
    assert len(json.loads(run(["audit", "show", "--json", "--limit", "1"], capsys)[1])) == 1
    code, out, _ = run(["audit", "show"], capsys)
    assert code == 0 and "failure(3)" in out and "success" in out


def test_show_by_path_or_content(shared: Path, history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def seqs(path: Path) -> list[int]:
        return [e["seq"] for e in json.loads(run(["audit", "show", "--json", "--path", str(path)], capsys)[1])]

    xray = sorted((shared / "deid" / "burned_in_text_jsl").glob("*XR_CHEST*.dcm"))[0]
    copy = history / "renamed.dcm"
    copy.write_bytes(xray.read_bytes())
    assert seqs(shared / PHANTOM) == [2]
    assert seqs(history / "ct.nii.gz") == [2]
    assert seqs(xray) == [4] and seqs(copy) == [4]
    assert seqs(history / "never-seen") == []


@pytest.mark.parametrize("bad", [["--outcome", "maybe"], ["--since", "yesterday"], ["--limit", "0"]])
def test_show_usage_errors(history: Path, capsys: pytest.CaptureFixture[str], bad: list[str]) -> None:
    code, _, err = run(["audit", "show", *bad], capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_show_marks_a_command_that_never_ended(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medseg.audit.record import AuditEvent
    from medseg.audit.store import AuditStore

    with AuditStore.open(load_config()) as store:
        store.append(AuditEvent("start", "crashed", "infer", {}, "u", None, "h", 1, {}, "2026-01-01T00:00:00Z"))
    events = json.loads(run(["audit", "show", "--json"], capsys)[1])
    assert [(e["command"], e["kind"]) for e in events][-1] == ("infer", "start")


def _keys(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str = "k") -> tuple[Path, Path]:
    private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    assert run(["audit", "keygen", str(private), str(public)], capsys)[0] == 0
    assert private.stat().st_mode & 0o777 == 0o600
    return private, public


def test_signed_export_round_trip_and_tamper(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private, public = _keys(history, capsys)
    snapshot = history / "snapshot.json"
    code, out, _ = run(["audit", "export", str(snapshot), "--key", str(private)], capsys)
    assert code == 0 and "5 records" in out
    code, out, _ = run(["audit", "verify-export", str(snapshot), "--public-key", str(public)], capsys)
    assert code == 0 and "signature valid" in out

    data = json.loads(snapshot.read_text())
    assert data["verification"]["ok"] and data["records"][-1]["kind"] == "start"
    assert b"PRIVATE" not in snapshot.read_bytes() and "path_key" not in snapshot.read_text()

    data["records"][3]["outcome"] = "success"
    tampered = history / "tampered.json"
    tampered.write_text(json.dumps(data))
    code, out, _ = run(["audit", "verify-export", str(tampered), "--public-key", str(public), "--json"], capsys)
    result = json.loads(out)
    assert code == 1 and not result["signature_ok"] and not result["chain_ok"]

    _, other_public = _keys(history, capsys, "other")
    code, out, _ = run(["audit", "verify-export", str(snapshot), "--public-key", str(other_public)], capsys)
    assert code == 1 and "signature does not match" in out


@pytest.mark.parametrize(
    ("member", "value"),
    [("signature", "AAAA"), ("records", {"1": {}}), ("records", ["x", "y"]), ("head", [5]), ("verification", None)],
)
def test_a_snapshot_whose_structure_was_changed_fails_in_one_line(
    history: Path, capsys: pytest.CaptureFixture[str], member: str, value: object
) -> None:
    """These once ended as 'internal error: AttributeError' (exit 4) instead of a failed check (exit 1)."""
    private, public = _keys(history, capsys)
    snapshot = history / "snapshot.json"
    assert run(["audit", "export", str(snapshot), "--key", str(private)], capsys)[0] == 0
    data = json.loads(snapshot.read_text())
    data[member] = value
    snapshot.write_text(json.dumps(data))
    code, out, err = run(["audit", "verify-export", str(snapshot), "--public-key", str(public)], capsys)
    assert code == 1 and "structure was changed" in out + err and "internal error" not in err


def test_export_is_audited_and_does_not_overwrite(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private, _ = _keys(history, capsys)
    snapshot = history / "snapshot.json"
    assert run(["audit", "export", str(snapshot), "--key", str(private)], capsys)[0] == 0
    events = json.loads(run(["audit", "show", "--json", "--command", "audit-export"], capsys)[1])
    assert events[0]["outputs"][0]["sha256"] == hashlib.sha256(snapshot.read_bytes()).hexdigest()
    code, _, err = run(["audit", "export", str(snapshot), "--key", str(private)], capsys)
    assert code == 2 and "already exists" in err


def test_encrypted_signing_key(history: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("MEDSEG_AUDIT_KEY_PASSPHRASE", "correct horse")
    private, public = _keys(history, capsys)
    assert b"ENCRYPTED" in private.read_bytes()
    snapshot = history / "s.json"
    assert run(["audit", "export", str(snapshot), "--key", str(private)], capsys)[0] == 0
    monkeypatch.setenv("MEDSEG_AUDIT_KEY_PASSPHRASE", "wrong")
    code, _, err = run(["audit", "export", str(history / "t.json"), "--key", str(private)], capsys)
    assert code == 2 and "signing key" in err
    assert run(["audit", "verify-export", str(snapshot), "--public-key", str(public)], capsys)[0] == 0


def test_anchor_on_another_volume(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    anchor_dir = tmp_path / "worm"
    monkeypatch.setenv("MEDSEG_AUDIT_ANCHOR_DIR", str(anchor_dir))
    with audited("convert", {}):
        pass
    assert (anchor_dir / "chain-anchor.log").read_text().count("\n") == 4
    assert not (load_config().audit_dir / "chain-anchor.log").exists()
    assert run(["audit", "verify"], capsys)[0] == 0
    audit_dir = str(load_config().audit_dir)
    assert run(["audit", "verify", "--audit-dir", audit_dir, "--anchor-dir", str(anchor_dir)], capsys)[0] == 0
    assert run(["audit", "verify", "--audit-dir", audit_dir], capsys)[0] == 0  # MEDSEG_AUDIT_ANCHOR_DIR still applies
    monkeypatch.delenv("MEDSEG_AUDIT_ANCHOR_DIR")
    code, out, _ = run(["audit", "verify", "--audit-dir", audit_dir, "--json"], capsys)
    assert code == 1 and json.loads(out)["first_problem"]["kind"] == "anchor"
