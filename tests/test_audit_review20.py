"""Defects a quality-auditor review of the audit trail and key material found (twentieth review), one test each."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg.audit.config import load_config
from medseg.audit.store import AuditStore
from medseg.audit.verify import verify_store
from medseg.cli.audited import audited
from medseg.errors import AuditError

PHANTOM = "dicom/mr_series_penn_prisma_phantom"


def _medseg(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "medseg", *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _records(folder: Path | None = None) -> list[dict]:
    """Every stored record body, in order (read through the store, read-only)."""
    with AuditStore.open(load_config(folder), create=False) as store:
        return [r.body for r in store.records()]


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def _event_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigterm_while_the_end_event_waits_for_the_lock_is_recorded(shared: Path, tmp_path: Path) -> None:
    """Item 1: SIGTERM while `convert` waited for the write lock to record its end left a finished output with only a
    start event (exit 130). Now the end event is written (interrupted, exit 130, the output listed)."""
    db = load_config().db_path
    out = tmp_path / "ct.nii.gz"
    argv = [sys.executable, "-m", "medseg", "convert", str(shared / PHANTOM), str(out)]
    proc = subprocess.Popen(argv, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _event_count(db) >= 1)
        holder = sqlite3.connect(db, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the end event must wait
        try:
            _wait_for(out.exists)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    ends = [r for r in _records() if r["kind"] == "end"]
    assert out.exists()
    assert len(ends) == 1 and ends[0]["outcome"] == "interrupted" and ends[0]["exit_code"] == 130, ends
    assert len(ends[0]["outputs"]) == 1
    with AuditStore.open(load_config(), create=False) as store:
        assert verify_store(store).ok


def test_outputs_are_removed_when_the_end_event_fails_for_any_reason(tmp_path: Path, monkeypatch) -> None:
    """Item 1: only an AuditError removed the registered outputs; any failure to write the end event must."""
    import medseg.audit.session as session

    def broken_digest(path: Path, key: bytes):
        raise RuntimeError("digest thread failed")

    out = tmp_path / "seg.nii.gz"
    with pytest.raises(AuditError, match="removed 1 unaudited output"), audited("infer", {}) as rec:
        out.write_bytes(b"segmentation")
        rec.add_outputs([out])
        monkeypatch.setattr(session, "describe_path", broken_digest)
        rec.add_inputs([tmp_path], background=True)
    assert not out.exists()
    assert [r["kind"] for r in _records()] == ["start"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


KILLED_AT_RENAME = """
import os, signal, sys
os.umask(0o022)
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from medseg.cli.main import main
main(sys.argv[1:])
"""


def _killed_at_rename(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `medseg ARGS` killed (SIGKILL) at its first rename: the key is in the temporary file, not yet in place."""
    return subprocess.run([sys.executable, "-c", KILLED_AT_RENAME, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize("kind", ["generate", "secret"])
def test_key_material_is_owner_only_while_written_and_a_rerun_removes_the_stale_copy(tmp_path: Path, kind: str) -> None:
    """Item 2: private keys and secrets were 0644 (umask 022) until a chmod after the rename; a process killed
    before it left a temporary file holding the private key, world-readable, that no rerun cleaned up."""
    args = ["keys", "generate", "--out", str(tmp_path), "--name", "site"] if kind == "generate" else \
        ["keys", "secret", str(tmp_path / "site.key")]  # fmt: skip
    killed = _killed_at_rename(*args)
    assert killed.returncode != 0
    (stale,) = tmp_path.glob(".tmp-site.key-*")
    assert _mode(stale) == 0o600
    done = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.umask(0o022))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".tmp-*"))
    assert _mode(tmp_path / "site.key") == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_other_users_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    """Item 2: `read_secret` took a de-identification secret any local user could read."""
    from medseg.errors import UsageError
    from medseg.keys import read_secret, write_secret

    secret = tmp_path / "deid.key"
    write_secret(secret)
    secret.chmod(mode)
    with pytest.raises(UsageError, match=rf"can be read by other users \(mode {mode:04o}\)") as info:
        read_secret(secret)
    assert info.value.exit_code == 2 and f"chmod 600 {secret}" in info.value.one_line()
    secret.chmod(0o600)
    assert len(read_secret(secret)) == 64


def _rewrite_body(db: Path, seq: int, edit) -> None:
    """Edit one stored body with sqlite tools (the append-only trigger dropped first, as an attacker would)."""
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("DROP TRIGGER events_no_update")
        (body,) = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (edit(body), seq))


@pytest.mark.parametrize(
    "edit",
    [
        lambda body: '{"inputs":[],"outputs":[],' + body[1:],  # SQLite reads the first, Python the last value
        lambda body: body.replace(",", ", ", 1),
    ],
    ids=["duplicate keys", "whitespace"],
)
def test_a_body_that_is_not_its_canonical_text_is_an_edit(tmp_path: Path, edit) -> None:
    """Item 3: a duplicate key put before the real `inputs` parsed (Python) to the same value, so verify said intact,
    while SQLite's JSON functions read the empty list and `audit show --path` no longer found the command."""
    with audited("convert", {}) as rec:
        rec.add_inputs([tmp_path])
    config = load_config()
    _rewrite_body(config.db_path, 2, edit)
    with AuditStore.open(config, create=False) as store:
        report = verify_store(store)
    assert not report.ok and report.first is not None
    assert (report.first.kind, report.first.seq) == ("edited", 2), report.problems


def test_a_failed_series_listing_is_recorded_as_a_failure(tmp_path: Path) -> None:
    """Item 4: `medseg series` on a folder without DICOM exited 3, but its end record said success, exit 0: the
    check ran after the audited block had closed."""
    (tmp_path / "readme.txt").write_text("hello\n")
    done = _medseg("series", str(tmp_path))
    assert done.returncode == 3, done.stderr
    (end,) = [r for r in _records() if r["kind"] == "end"]
    assert (end["command"], end["outcome"], end["exit_code"]) == ("series", "failure", 3)


def _signing_key(folder: Path) -> Path:
    from medseg.keys import keypair_paths, write_keypair

    private, public = keypair_paths(folder, "auditor")
    write_keypair(private, public)
    return private


def test_export_never_creates_a_store_and_a_lost_store_is_exit_1(tmp_path: Path) -> None:
    """Item 5: `audit export` with a mistyped folder created a brand-new store and signed it; a deleted audit.db
    whose anchor names records gave exit 4 instead of the documented 1. It opens the store read-only first, as
    verify does, and answers as verify does."""
    key = _signing_key(tmp_path / "keys")
    typo = tmp_path / "typo-audit-dir"
    env = dict(os.environ, MEDSEG_AUDIT_DIR=str(typo))
    verify = _medseg("audit", "verify", env=env)
    export = _medseg("audit", "export", str(tmp_path / "snap.json"), "--key", str(key), env=env)
    assert export.returncode == verify.returncode == 4 and export.stderr == verify.stderr, export.stderr
    assert not typo.exists() and not (tmp_path / "snap.json").exists()
    with audited("convert", {}):
        pass
    load_config().db_path.unlink()
    lost = _medseg("audit", "export", str(tmp_path / "snap.json"), "--key", str(key))
    assert lost.returncode == 1 and "records were lost" in lost.stderr, lost.stderr
    assert len(lost.stderr.strip().splitlines()) == 1
    assert not load_config().db_path.exists() and not (tmp_path / "snap.json").exists()


def test_an_explicit_audit_dir_keeps_the_anchor_of_medseg_audit_anchor_dir(tmp_path: Path, monkeypatch) -> None:
    """Item 6: naming the store with --audit-dir dropped MEDSEG_AUDIT_ANCHOR_DIR: verify said 'anchor missing', and
    an export anchored its own events beside the store, so the next plain verify said 'never anchored'."""
    store, anchor = tmp_path / "store", tmp_path / "anchor-volume"
    monkeypatch.setenv("MEDSEG_AUDIT_DIR", str(store))
    monkeypatch.setenv("MEDSEG_AUDIT_ANCHOR_DIR", str(anchor))
    with audited("convert", {}):
        pass
    key = _signing_key(tmp_path / "keys")
    assert _medseg("audit", "verify", "--audit-dir", str(store)).returncode == 0
    export = _medseg("audit", "export", str(tmp_path / "s.json"), "--key", str(key), "--audit-dir", str(store))
    assert export.returncode == 0, export.stderr
    assert not (store / "chain-anchor.log").exists()
    plain = _medseg("audit", "verify")
    assert plain.returncode == 0 and "intact: 4 records" in plain.stdout, plain.stdout + plain.stderr


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text.replace('"exit_code": 0', '"exit_code": NaN', 1),
        lambda text: text.replace('"exit_code": 0', '"exit_code": 1e400', 1),
        lambda text: text.replace('"records": [', '"records": [' + "[" * 200_000 + "]" * 200_000 + ",", 1),
        lambda text: text[:3000],
    ],
    ids=["NaN", "1e400", "200000 deep", "truncated"],
)
def test_a_damaged_snapshot_is_not_valid_exit_1(tmp_path: Path, damage) -> None:
    """Item 7: verify-export of a snapshot holding NaN or 1e400 was an internal error (exit 4), one nested 200,000
    deep too, and a truncated one exit 3: each is an altered snapshot, 'NOT valid', exit 1."""
    with audited("convert", {}):
        pass
    key = _signing_key(tmp_path / "keys")
    snapshot = tmp_path / "s.json"
    assert _medseg("audit", "export", str(snapshot), "--key", str(key)).returncode == 0
    damaged = tmp_path / "damaged.json"
    damaged.write_text(damage(snapshot.read_text()))
    assert damaged.read_text() != snapshot.read_text()
    done = _medseg("audit", "verify-export", str(damaged), "--public-key", f"{key}.pub")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(f"{damaged}: NOT valid: ") and "internal error" not in done.stderr


@pytest.mark.parametrize("how", ["emptied", "foreign"])
def test_an_empty_or_foreign_store_without_anchor_is_exit_1_for_readers(tmp_path: Path, how: str) -> None:
    """Item 8: with no anchor log, an emptied audit.db or another application's SQLite database was exit 4 with
    'free disk space' advice for verify, show and export; docs/audit.md says exit 1, restore from a backup."""
    folder = tmp_path / "audit"
    folder.mkdir()
    db = folder / "audit.db"
    if how == "emptied":
        db.write_bytes(b"")
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE patients (name TEXT)")
    before = db.read_bytes()
    env = dict(os.environ, MEDSEG_AUDIT_DIR=str(folder))
    key = _signing_key(tmp_path / "keys")
    for args in (["verify"], ["show"], ["export", str(tmp_path / "s.json"), "--key", str(key)]):
        done = _medseg("audit", *args, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, (args, done.stderr)
        assert "Restore audit.db from a backup" in lines[0] and "disk space" not in lines[0]
    assert db.read_bytes() == before and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("variable", ["MEDSEG_AUDIT_DIR", "MEDSEG_AUDIT_ANCHOR_DIR"])
def test_an_audit_folder_that_is_a_file_is_one_line_saying_so(shared: Path, tmp_path: Path, variable: str) -> None:
    """Item 8: MEDSEG_AUDIT_DIR naming a file was 'cannot open the audit store: File exists ... free disk space'.
    Now one line saying the folder is a file, exit 4 (the README's 'audit trail cannot be written')."""
    blocker = tmp_path / "isfile"
    blocker.write_text("x\n")
    env = dict(os.environ, **{variable: str(blocker)})
    for args in (["series", str(shared / PHANTOM)], ["audit", "verify"]):
        done = _medseg(*args, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 4 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: {blocker}: the ") and "is a file, not a folder" in lines[0], lines
        assert "disk space" not in lines[0]
    assert blocker.read_text() == "x\n"


def test_show_path_of_a_file_finds_commands_that_read_its_folder(tmp_path: Path) -> None:
    """Item 9: `audit show --path FILE` missed the commands that read the study folder holding FILE (series,
    convert and infer take folders)."""
    study = tmp_path / "DOE^JOHN" / "study"
    study.mkdir(parents=True)
    (study / "1.dcm").write_bytes(b"DICM")
    with audited("series", {}) as rec:
        rec.add_inputs([study])
    with audited("convert", {}) as rec:
        rec.add_inputs([tmp_path / "elsewhere"])
    done = _medseg("audit", "show", "--json", "--path", str(study / "1.dcm"))
    assert done.returncode == 0, done.stderr
    assert [r["command"] for r in json.loads(done.stdout)] == ["series"]


@pytest.mark.parametrize("command", ["convert", "infer"])
def test_a_free_text_series_value_is_stored_keyed(shared: Path, tmp_path: Path, command: str) -> None:
    """Item 10: a free-text `--series` (a patient-named folder typed by mistake) was stored raw in the audit trail
    and so in signed exports; only medseg's own `auto-<hex>` key is stored as it is."""
    phi = "DOE^JOHN MRN12345"
    out = [str(tmp_path / "ct.nii.gz")] if command == "convert" else ["--out", str(tmp_path / "out")]
    for series in (phi, "auto-0123456789abcdef"):
        done = _medseg(command, str(shared / PHANTOM), *out, "--series", series)
        assert done.returncode == 2, done.stderr  # neither series is in the folder
    recorded = [r["params"]["series"] for r in _records() if r["kind"] == "start"]
    assert recorded[0].startswith("hmac-sha256:") and recorded[1] == "auto-0123456789abcdef", recorded
    folder = load_config().audit_dir
    assert not any(phi.encode() in p.read_bytes() for p in folder.iterdir())


def test_an_operator_with_control_characters_is_refused_before_anything_runs(shared: Path) -> None:
    """Item 11: a newline in MEDSEG_OPERATOR was stored and printed raw, forging a whole line in `audit show`."""
    forged = "alice\n     3  2026-12-01T03:00:00.000000Z  infer      success        bob"
    for operator in (forged, "alice\x1b[2K"):
        done = _medseg("series", str(shared / PHANTOM), env=dict(os.environ, MEDSEG_OPERATOR=operator))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1
        assert "MEDSEG_OPERATOR holds a control or format character" in lines[0]
    assert not load_config().db_path.exists()


def test_audit_show_escapes_control_characters_in_every_field(tmp_path: Path) -> None:
    """Item 11: `audit show` printed stored fields raw; a record written before the operator check (or by library
    code with an odd command name) must still print as one line per event."""
    from medseg.audit.config import AuditConfig
    from medseg.audit.session import audit_session

    config = load_config()
    odd = AuditConfig(config.audit_dir, config.anchor_dir, "alice\n    99  forged line")
    with audit_session("conv\x1b[31mert", {}, software={"medseg": "test"}, config=odd):
        pass
    done = _medseg("audit", "show")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert "alice\\n    99  forged line" in line and "conv\\x1b[31mert" in line


@pytest.mark.parametrize("bound", ["--since 0001-01-01T00:00+01:00", "--since 999999999w",
                                   "--until 9999-12-31T23:59-01:00"])  # fmt: skip
def test_an_out_of_range_time_is_a_usage_error(bound: str) -> None:
    """Item 12: these were OverflowError, 'internal error ... report it', exit 4."""
    with audited("convert", {}):
        pass
    done = _medseg("audit", "show", *bound.split())
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "out of the range of dates" in lines[0], done.stderr


def test_bytes_that_are_not_utf8_are_escaped_or_refused_before_the_start_event(shared: Path, tmp_path: Path) -> None:
    """Item 12: `--series $'\\xff'` or a MEDSEG_OPERATOR with such a byte was UnicodeEncodeError, exit 4."""
    done = _medseg("convert", str(shared / PHANTOM), str(tmp_path / "ct.nii.gz"), "--series", "\udcff")
    assert done.returncode == 2 and "internal error" not in done.stderr, done.stderr
    refused = _medseg("series", str(shared / PHANTOM), env=dict(os.environ, MEDSEG_OPERATOR="op\udcff"))
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "not UTF-8" in lines[0], refused.stderr
    with audited("infer", {"organ": "li\udcffver"}):
        pass
    params = [r["params"] for r in _records() if r["kind"] == "start"]
    assert params[0]["series"].startswith("hmac-sha256:") and params[1]["organ"] == "li\\udcffver", params
    with AuditStore.open(load_config(), create=False) as store:
        assert verify_store(store).ok
