"""Defects a quality-auditor review of the audit trail and key material found (twentieth review), one test each."""

from __future__ import annotations

import os
import signal
import sqlite3
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
